"""Label names across the packages: a dataset.json's names as hiend-train stores them in a checkpoint
read back by hiend-model (with torch) and by hiend-eval (without it) as the same dict."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_checkpoint_label_names_read_by_model_and_eval_alike(tmp_path: Path) -> None:
    import torch

    from hiend_data.labels import label_names_to_json, read_label_names
    from hiend_data.phantom import make_phantom_dataset
    from hiend_eval.score import read_label_source
    from hiend_model import UNETR, build
    from hiend_model.checkpoint import read_checkpoint_info, save_checkpoint

    raw = make_phantom_dataset(tmp_path / "raw", cases=1, seed=0)
    names = read_label_names(raw / "dataset.json")
    assert names == {1: "liver", 2: "spleen", 3: "kidney_right", 4: "kidney_left", 5: "spine", 6: "lungs"}
    torch.manual_seed(0)
    model = UNETR.from_mae(build("tiny"), num_classes=7, feature_size=4)
    ckpt = save_checkpoint(tmp_path / "u.safetensors", model, extra={"labels": label_names_to_json(names)})
    assert read_checkpoint_info(ckpt).label_names == names
    assert read_label_source(ckpt) == names == read_label_source(raw / "dataset.json")
    code = (
        "import sys\n"
        "from hiend_eval.score import read_label_source\n"
        f"names = read_label_source({str(ckpt)!r})\n"
        "assert 'torch' not in sys.modules, 'reading label names imported torch'\n"
        "print(names)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(names)
