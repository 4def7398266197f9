"""The judge: training through the shared loop, save/load, the API evaluate uses, the Fréchet
distance, and the train_judge stage (which reads data/processed and nothing else)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
import yaml
from PIL import Image

from squeezegen.data.captions import GENRES, STYLES
from squeezegen.errors import UserError
from squeezegen.judge import Judge, frechet_distance, judge_images, load_judge, prepare_images, save_judge
from squeezegen.judge.train import IGNORE, JudgeData, load_judge_data, make_judge_loss, train_judge

ROOT = Path(__file__).resolve().parents[1]


def tiny_cfg(**overrides):
    from squeezegen.config import JudgeConfig

    knobs = dict(
        lr=3e-3, warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, style_weight=1.0, genre_weight=0.5,
        score_weight=1.0, label_smoothing=0.0, flip=True, shift=1, dropout=0.0, checkpoint_every=100,
        channels=(8, 16), max_steps=30, batch_size=8,
    )
    return JudgeConfig(**{**knobs, **overrides})


def labelled_images(n: int, size: int = 16, seed: int = 0) -> JudgeData:
    """uint8 images whose colour says the style (of 3), whose layout says the genre (of 2), and whose
    brightness is the score: learnable in a few steps."""
    rng = np.random.default_rng(seed)
    style = rng.integers(0, 3, n)
    genre = rng.integers(0, 2, n)
    score = rng.uniform(20, 80, n)
    palette = np.array([[200, 40, 40], [40, 200, 40], [40, 40, 200]], np.float64)
    images = np.zeros((n, size, size, 3), np.uint8)
    for i in range(n):
        image = np.full((size, size, 3), 30.0) + palette[style[i]] * (0.4 + 0.6 * score[i] / 100)
        if genre[i]:
            image[: size // 2] *= 0.3  # a dark top half
        images[i] = np.clip(image + rng.normal(0, 5, image.shape), 0, 255)
    return JudgeData(
        images=torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(),
        style=torch.from_numpy(style).long(),
        genre=torch.from_numpy(genre).long(),
        score=torch.from_numpy(score).float(),
    )


def tiny_judge(size: int = 16) -> Judge:
    torch.manual_seed(0)
    return Judge(channels=[8, 16], image_size=size, styles=STYLES, genres=GENRES).eval()


# ------------------------------------------------------------------------------------ training


def test_judge_loss_falls_through_the_shared_loop(tmp_path, one_torch_thread):
    data = labelled_images(48)
    cfg = tiny_cfg(max_steps=60, lr=1e-2)
    result = train_judge(cfg=cfg, seed=0, data=data, checkpoint_dir=tmp_path / "ckpt", fingerprint="tiny")
    first = np.mean([h["loss"] for h in result.history[:5]])
    last = np.mean([h["loss"] for h in result.history[-5:]])
    assert len(result.history) == 60 and last < 0.5 * first, (first, last)
    assert {"style_ce", "genre_ce", "score_mse"} <= set(result.history[-1])
    assert result.model.score_mean.item() == pytest.approx(float(data.score.double().mean()), rel=1e-5)


def test_unknown_labels_and_missing_scores_are_skipped_not_nan():
    data = labelled_images(8)
    loss_fn = make_judge_loss(tiny_cfg(), score_mean=50.0, score_std=15.0)
    model = tiny_judge().train()
    style = torch.full((8,), IGNORE)
    score = torch.full((8,), float("nan"))
    loss, extras = loss_fn(model, (data.images, style, data.genre, score), 0)
    assert torch.isfinite(loss) and extras["style_ce"] == 0 and extras["score_mse"] == 0 and extras["genre_ce"] > 0


# ------------------------------------------------------------------------------------ model API


def test_save_load_round_trip_keeps_outputs_names_and_size(tmp_path):
    judge = tiny_judge()
    judge.score_mean.fill_(47.0)
    judge.score_std.fill_(11.0)
    save_judge(judge, tmp_path / "judge", meta={"steps": 3})
    config = json.loads((tmp_path / "judge" / "config.json").read_text())
    assert config["styles"] == list(STYLES) and config["genres"] == list(GENRES) and config["image_size"] == 16
    loaded = load_judge(tmp_path / "judge")
    assert not loaded.training and loaded.meta == {"steps": 3}
    x = torch.rand(3, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        a, b = judge(x), loaded(x)
    for key in ("style_logits", "genre_logits", "score", "features"):
        assert torch.equal(a[key], b[key]), key
    assert a["features"].shape == (3, 16) and a["style_logits"].shape == (3, 26) and a["genre_logits"].shape == (3, 7)


def test_load_judge_without_a_model_says_which_stage_to_run(tmp_path):
    with pytest.raises(UserError, match="train_judge"):
        load_judge(tmp_path / "nothing")


def test_forward_refuses_another_size_and_prepare_images_resizes():
    judge = tiny_judge(size=16)
    with pytest.raises(ValueError, match="prepare_images"):
        judge(torch.zeros(1, 3, 32, 32))
    uint8 = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    x = prepare_images(judge, uint8)
    assert x.shape == (2, 3, 16, 16) and x.min() >= -1 and x.max() <= 1
    same = torch.rand(2, 3, 16, 16) * 2 - 1
    assert torch.equal(prepare_images(judge, same), same)


def test_judge_images_accuracy_scores_and_features():
    judge = tiny_judge()
    images = torch.randint(0, 256, (5, 3, 24, 24), dtype=torch.uint8)  # another size: resized by the helper
    out = judge_images(judge, images, batch_size=2)
    assert out["features"].shape == (5, 16) and out["scores"].shape == (5,) and "style_acc" not in out
    assert out["score_mean"] == pytest.approx(float(out["scores"].mean()), rel=1e-6)
    labelled = judge_images(judge, images, styles=out["style_pred"], genres=[GENRES.index(g) for g in out["genre_pred"]])
    assert labelled["style_acc"] == 1.0 and labelled["genre_acc"] == 1.0  # its own answers are all right
    with pytest.raises(UserError, match="Cubism"):
        judge_images(judge, images, styles=["Surrealism"] * 5)


# ------------------------------------------------------------------------------------ Fréchet distance


def _oracle_fd(a: np.ndarray, b: np.ndarray) -> float:
    """The textbook formula with scipy's sqrtm (fine on well-conditioned covariances)."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(cov_a @ cov_b).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * covmean))


def test_frechet_distance_zero_for_identical_sets_and_grows_with_a_shift():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 6)) @ rng.normal(size=(6, 6))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    shift = np.array([1.0, -2.0, 0.5, 0.0, 0.0, 3.0])
    distances = [frechet_distance(a, a + t * shift) for t in (0.5, 1.0, 2.0)]
    assert distances[0] < distances[1] < distances[2]
    assert distances[1] == pytest.approx((shift**2).sum(), rel=1e-9)  # same covariance: only the means differ
    b = rng.normal(size=(300, 6)) * 1.5 + 0.3
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-9)
    assert frechet_distance(a, b) == pytest.approx(_oracle_fd(a, b), rel=1e-6)


def test_frechet_distance_is_finite_for_fewer_samples_than_dimensions_and_checks_shapes():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(5, 32)), rng.normal(size=(7, 32))  # singular covariances
    d = frechet_distance(a, b)
    assert np.isfinite(d) and d > 0
    with pytest.raises(ValueError):
        frechet_distance(a, rng.normal(size=(5, 16)))
    with pytest.raises(UserError):
        frechet_distance(a[:1], b)


# ------------------------------------------------------------------------------------ the stage


def write_tiny_judge_project(root: Path, *, size: int = 16) -> None:
    """params.yaml (the repo's, judge shrunk to seconds) + data/processed (30 train / 8 val labelled images)."""
    import datasets

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["profiles"]["toy"]["judge"].update(channels=[8, 16], max_steps=6, batch_size=8)
    raw["judge"]["checkpoint_every"] = 3
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    features = datasets.Features({
        "image_id": datasets.Value("string"), "image_rq": datasets.Image(), "style": datasets.Value("string"),
        "genre": datasets.Value("string"), "score": datasets.Value("float64"),
    })

    def split(n: int, seed: int) -> datasets.Dataset:
        data = labelled_images(n, size=size, seed=seed)
        pixels = data.images.permute(0, 2, 3, 1).numpy()  # (n, S, S, 3)
        rows = {
            "image_id": [f"img{seed}_{i}" for i in range(n)],
            "image_rq": [Image.fromarray(p) for p in pixels],
            "style": [STYLES[i] for i in data.style.tolist()],
            "genre": [GENRES[i] for i in data.genre.tolist()],
            "score": data.score.double().tolist(),
        }
        return datasets.Dataset.from_dict(rows, features=features)

    datasets.DatasetDict(train=split(30, 0), val=split(8, 1)).save_to_disk(str(root / "data" / "processed"))


_OPENED: list[tuple[str, object, object]] | None = None


def _record_open(event: str, args: tuple) -> None:
    if event == "open" and _OPENED is not None:
        path, mode, flags = args
        if isinstance(path, (str, bytes, os.PathLike)):
            _OPENED.append((os.fsdecode(path), mode, flags))


def _reads(opened: list[tuple[str, object, object]]) -> set[str]:
    def is_read(mode: object, flags: object) -> bool:
        if isinstance(mode, str):
            return not set(mode) & set("wax+")
        return isinstance(flags, int) and not flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)

    return {path for path, mode, flags in opened if is_read(mode, flags)}


def test_stage_reads_only_data_processed_and_writes_model_metrics_and_curve(tmp_path, monkeypatch, one_torch_thread):
    global _OPENED
    from squeezegen.metrics_files import merge_perf
    from squeezegen.stages import train_judge as stage

    write_tiny_judge_project(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SQUEEZEGEN_MLFLOW", "0")
    (tmp_path / "models" / "rqvae").mkdir(parents=True)  # a generator's folder beside it: must stay unread
    (tmp_path / "models" / "rqvae" / "config.json").write_text("{}")
    sys.addaudithook(_record_open)  # cannot be removed; it records only while _OPENED is a list
    _OPENED = []
    try:
        metrics = stage.main()
    finally:
        opened, _OPENED = _OPENED, None
    project_reads = {Path(p).resolve() for p in _reads(opened)} - {Path(p).resolve() for p in _reads([])}
    inside = sorted(str(p.relative_to(tmp_path.resolve())) for p in project_reads if tmp_path.resolve() in p.parents)
    own = ("checkpoints/train_judge", "models/judge", "metrics/judge")  # what the stage writes (and may reopen)
    # files read that are still there (folders and the atomic writes' temp files are opened to fsync them)
    inputs = [p for p in inside if not p.startswith(own) and (tmp_path / p).is_file()]
    assert inputs and all(p == "params.yaml" or p.startswith("data/processed/") for p in inputs), inputs
    assert any(p.startswith("data/processed/") for p in inputs)

    on_disk = json.loads(Path("metrics/judge.json").read_text())
    assert merge_perf(on_disk) == json.loads(json.dumps(metrics))
    assert {"train_seconds", "steps_per_s", "peak_mem_bytes"} <= set(on_disk["perf"])
    for key in ("style_acc", "genre_acc", "score_mae", "score_r2", "style_chance", "genre_chance", "params"):
        assert key in on_disk, key
    assert on_disk["style_chance"] == pytest.approx(1 / 26, abs=1e-6) and on_disk["n_train"] == 30 and on_disk["n_val"] == 8
    lines = Path("metrics/judge_loss.csv").read_text().splitlines()
    assert lines[0] == "step,loss,style_ce,genre_ce,score_mse,lr" and len(lines) == 1 + 6
    judge = load_judge("models/judge")
    assert judge.image_size == 16 and judge.styles == STYLES and on_disk["params"] == sum(p.numel() for p in judge.parameters())
    assert not Path("checkpoints/train_judge").exists()


def test_stage_declares_only_data_processed_and_imports_no_generator():
    """The DAG gives train_judge no generated image to read, and its code cannot build a generator."""
    from squeezegen.stagedeps import import_closure

    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["train_judge"]
    data_deps = [d for d in stage["deps"] if not d.startswith(("src/", "stages/")) and d != "requirements.lock"]
    assert data_deps == ["data/params_checked.json", "data/processed"]  # the params check's marker, and real images
    closure = {p.as_posix() for p in import_closure(ROOT, Path("stages/train_judge.py"))}
    generators = [p for p in closure if p.startswith(("src/squeezegen/rq/", "src/squeezegen/sd/", "src/squeezegen/quant/"))]
    assert not generators, generators
    from squeezegen.stages import train_judge as module

    paths = {v for k, v in vars(module).items() if k.endswith("_DIR") and isinstance(v, Path)}
    assert paths == {Path("data/processed"), Path("models/judge"), Path("checkpoints/train_judge")}


def test_load_judge_data_errors_name_the_problem(tmp_path):
    with pytest.raises(UserError, match="preprocess"):
        load_judge_data(tmp_path / "missing", "train")
    write_tiny_judge_project(tmp_path)
    with pytest.raises(UserError, match="'test'"):
        load_judge_data(tmp_path / "data" / "processed", "test")
    data = load_judge_data(tmp_path / "data" / "processed", "val")
    assert data.images.shape == (8, 3, 16, 16) and data.images.dtype == torch.uint8
    assert (data.style >= 0).all() and not data.score.isnan().any()


def test_cli_train_judge_without_processed_data_is_one_clear_error(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from squeezegen.cli import app

    runner = CliRunner()
    assert "train-judge" in runner.invoke(app, ["--help"]).output
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SQUEEZEGEN_MLFLOW", "0")
    result = runner.invoke(app, ["train-judge", "--params", str(ROOT / "params.yaml")])
    assert result.exit_code == 2 and "data/processed" in result.output and "preprocess" in result.output
    assert "Traceback" not in result.output
