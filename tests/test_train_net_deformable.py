"""tools/train_net.py with the real Deformable DETR (the shipped R50 config shrunk to a tiny
network, tests/configs/deformable_detr_tiny_demo.py) on the demo dataset: train -> --eval-only."""
import json
import os

import pytest
import torch

from test_train_net import read_metrics, run_train_net

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "tests", "configs", "deformable_detr_tiny_demo.py")


@pytest.mark.slow
def test_deformable_detr_train_then_eval_only(tmp_path):
    out = str(tmp_path / "train")
    proc = run_train_net("--config-file", CONFIG, f"train.output_dir={out}", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [m for m in read_metrics(out) if "total_loss" in m]
    assert [m["iteration"] for m in rows] == [0, 1, 2, 3]
    assert {"loss_class", "loss_bbox", "loss_giou"} <= set(rows[0])
    # lr: base 2e-4 until the decay at iteration 2 (1 of 2 "epochs"), then x0.1.
    assert [m["lr"] for m in rows] == [2e-4, 2e-4, 2e-5, 2e-5]
    ckpt = torch.load(os.path.join(out, "model_final.pth"), weights_only=False)
    assert ckpt["iteration"] == 3
    # The lr multipliers reached the real parameter names (0.1x backbone / offsets / refs).
    groups = ckpt["trainer"]["optimizer"]["param_groups"]
    assert sorted(g["initial_lr"] for g in groups) == [2e-5, 2e-4]
    # num_classes came from the demo dataset's metadata (6 classes), for the model and criterion.
    assert ckpt["model"]["class_embed.0.weight"].shape[0] == 6

    eval_out = str(tmp_path / "eval")
    proc = run_train_net(
        "--config-file", CONFIG, "--eval-only", f"train.output_dir={eval_out}",
        f"train.init_checkpoint={out}/model_final.pth", timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.load(open(os.path.join(eval_out, "eval_results.json")))
    assert set(results["bbox"]) >= {"AP", "AP50", "AP75"}
    assert "copypaste: AP,AP50,AP75,APs,APm,APl" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_resume_after_an_architecture_change_names_the_checkpoint_and_keeps_the_run(tmp_path):
    """--resume with model.num_queries changed, or box refinement switched on: one line naming
    the checkpoint and what differs, exit 2, every file of the run as it was (config.yaml
    included: it used to be replaced by the new settings before the resume failed, and the
    line listed every checkpoint of the run as "cannot be loaded")."""
    out = tmp_path / "run"
    proc = run_train_net("--config-file", CONFIG, f"train.output_dir={out}", "train.max_iter=2",
                         "train.checkpointer.period=1", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    kept = {name: (out / name).read_bytes() for name in os.listdir(out) if name.endswith((".pth", ".yaml"))}
    kept["last_checkpoint"] = (out / "last_checkpoint").read_bytes()
    assert {"config.yaml", "model_final.pth", "model_0000000.pth"} <= set(kept)
    for override, differs in [
        ("model.num_queries=30", "the checkpoint was trained with model.num_queries=20, the config has 30; "
                                 "1 shape mismatch(es): query_embed.weight: (20, 64) in the checkpoint, (30, 64) in the model"),
        ("model.with_box_refine=True", "the checkpoint was trained with model.with_box_refine=False, the config has True"),
    ]:
        # (train.checkpointer.period=1 as the first run had it: a left-out override is refused
        # before any checkpoint is read, tests/test_resume_check.py)
        proc = run_train_net("--config-file", CONFIG, "--resume", f"train.output_dir={out}", "train.max_iter=4",
                             "train.checkpointer.period=1", override, timeout=600)
        assert proc.returncode == 2, proc.stderr[-3000:]
        assert "Traceback" not in proc.stderr
        (line,) = [line for line in proc.stderr.splitlines() if line.startswith("train_net:")]
        assert line.startswith(f"train_net: error: --resume: {out / 'model_final.pth'} does not fit the model (resume): "
                               f"{differs}"), line
        assert line.endswith(f"; nothing was loaded or overwritten: resume with the run's settings "
                             f"({out / 'config.yaml'}), or train into another train.output_dir")
        assert {name: (out / name).read_bytes() for name in kept} == kept
