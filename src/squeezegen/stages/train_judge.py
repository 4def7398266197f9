"""train_judge: train the referee (style / genre / score CNN) on `data/processed` and nothing else.

In: `data/processed` (its train split to learn from, its val split to measure on; column
image_rq, the RQ branch's resolution). The judge never sees a generated image: this stage reads
no model folder and no report, only PROCESSED_DIR (tests hold it to that).
Out: `models/judge/` (safetensors + config.json with the style and genre names and the image
size), `metrics/judge.json` (val style / genre accuracy with chance levels, score MAE and R²,
parameters; timings under `perf`) and `metrics/judge_loss.csv` (the loss curve, a DVC plot).
Resumable checkpoints go to `checkpoints/train_judge/` and are deleted on success.
"""

from __future__ import annotations

from pathlib import Path

from squeezegen.config import load_config
from squeezegen.metrics_files import memory_perf_keys
from squeezegen.tracking import stage_run

PROCESSED_DIR = Path("data/processed")  # the stage's one input
MODEL_DIR = Path("models/judge")
CHECKPOINT_DIR = Path("checkpoints/train_judge")
LOSS_CSV = Path("metrics/judge_loss.csv")
LOSS_COLUMNS = ["step", "loss", "style_ce", "genre_ce", "score_mse", "lr"]


def main(params: str = "params.yaml", profile: str | None = None) -> dict:
    from squeezegen.files import fingerprint
    from squeezegen.judge.model import count_parameters, save_judge
    from squeezegen.judge.train import evaluate_judge, load_judge_data, score_scale, train_judge
    from squeezegen.metrics_files import write_history_csv
    from squeezegen.training import cleanup_checkpoints, cosine_settings, make_accelerator

    cfg = load_config(params, profile=profile)
    with stage_run("train_judge", cfg) as run:
        train_data = load_judge_data(PROCESSED_DIR, "train")
        val_data = load_judge_data(PROCESSED_DIR, "val")
        accelerator = make_accelerator(cosine_settings(cfg.judge, seed=cfg.seed))
        parts = {"judge": cfg.section_dict("judge"), "seed": cfg.seed, "data": train_data.digest()}
        result = train_judge(
            cfg=cfg.judge,
            seed=cfg.seed,
            data=train_data,
            checkpoint_dir=CHECKPOINT_DIR,
            fingerprint=fingerprint(**parts),
            accelerator=accelerator,
            on_log=run.log_step,
        )
        if not accelerator.is_main_process:
            return {}
        judge = result.model.eval()
        save_judge(judge, MODEL_DIR, meta={"steps": cfg.judge.max_steps, "trained_on": f"{PROCESSED_DIR} train split"})
        metrics = evaluate_judge(judge, val_data, train_score_mean=score_scale(train_data)[0])
        metrics.update(
            n_train=len(train_data),
            params=count_parameters(judge),
            image_size=judge.image_size,
            final_loss=result.history[-1]["loss"],
            train_seconds=round(result.seconds, 2),
            resumed_from_step=result.resumed_from_step,  # > 0: the timings cover the steps after it only
            steps_per_s=round(result.steps_per_s, 3),
            peak_mem_bytes=result.peak_mem_bytes,
        )
        write_history_csv(LOSS_CSV, result.history, LOSS_COLUMNS)
        run.write_metrics("judge", metrics, machine_dependent=memory_perf_keys(accelerator.device.type))
        cleanup_checkpoints(CHECKPOINT_DIR)
    shown = {k: "n/a" if metrics[k] is None else f"{metrics[k]:.3f}" for k in ("style_acc", "genre_acc", "score_mae", "score_r2")}
    print(
        f"train_judge: val style acc {shown['style_acc']} (chance {metrics['style_chance']:.3f}), genre acc "
        f"{shown['genre_acc']}, score MAE {shown['score_mae']} R² {shown['score_r2']} → {MODEL_DIR}"
    )
    return metrics
