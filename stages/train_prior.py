"""DVC stage `train_prior`: the logic is `squeezegen.stages.train_prior.main` (also `squeezegen train-prior`)."""

from squeezegen.stages import run_stage_script

if __name__ == "__main__":
    run_stage_script("train_prior")
