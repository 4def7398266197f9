"""DVC stage `check_params`: the logic is `squeezegen.stages.check_params.main` (also `squeezegen check-params`)."""

from squeezegen.stages import run_stage_script

if __name__ == "__main__":
    run_stage_script("check_params")
