"""DVC stage `train_judge`: the logic is `squeezegen.stages.train_judge.main` (also `squeezegen train-judge`)."""

from squeezegen.stages import run_stage_script

if __name__ == "__main__":
    run_stage_script("train_judge")
