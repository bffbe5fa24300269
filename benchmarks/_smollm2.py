"""SmolLM2-135M-Instruct as a float32 safetensors model directory, made once (`longrl models
smollm2`, src/longrl/convert.py) into a cache the benchmarks share."""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

DEFAULT_DIR = Path(os.environ.get("LONGRL_CACHE", Path.home() / ".cache" / "longrl")) / "smollm2-135m-instruct"


def smollm2_dir(out_dir: Path = DEFAULT_DIR) -> Path:
    if (out_dir / "config.json").is_file() and any(out_dir.glob("*.safetensors")):
        return out_dir
    from longrl.convert import convert_gguf, smollm2_gguf

    return convert_gguf(smollm2_gguf(), out_dir)


if __name__ == "__main__":
    print(smollm2_dir())
