"""DVC stage `evaluate`: the logic is `squeezegen.stages.evaluate.main` (also `squeezegen evaluate`)."""

from squeezegen.stages import run_stage_script

if __name__ == "__main__":
    run_stage_script("evaluate")
