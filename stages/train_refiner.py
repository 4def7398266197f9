"""DVC stage `train_refiner`: the logic is `squeezegen.stages.train_refiner.main` (also `squeezegen train-refiner`)."""

from squeezegen.stages import run_stage_script

if __name__ == "__main__":
    run_stage_script("train_refiner")
