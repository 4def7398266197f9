"""DVC stage `fetch_base`: the logic is `squeezegen.stages.fetch_base.main` (also `squeezegen fetch-base`)."""

from squeezegen.stages import run_stage_script

if __name__ == "__main__":
    run_stage_script("fetch_base")
