"""DVC stage `quantize`: the logic is `squeezegen.stages.quantize.main` (also `squeezegen quantize`)."""

from squeezegen.stages import run_stage_script

if __name__ == "__main__":
    run_stage_script("quantize")
