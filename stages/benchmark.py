"""DVC stage `benchmark`: the logic is `squeezegen.stages.benchmark.main` (also `squeezegen benchmark`)."""

from squeezegen.stages import run_stage_script

if __name__ == "__main__":
    run_stage_script("benchmark")
