"""DVC stage `train_rqvae`: the logic is `squeezegen.stages.train_rqvae.main` (also `squeezegen train-rqvae`)."""

from squeezegen.stages import run_stage_script

if __name__ == "__main__":
    run_stage_script("train_rqvae")
