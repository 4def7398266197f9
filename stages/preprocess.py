"""DVC stage `preprocess`: the logic is `squeezegen.stages.preprocess.main` (also `squeezegen preprocess`)."""

from squeezegen.stages import run_stage_script

if __name__ == "__main__":
    run_stage_script("preprocess")
