"""DVC stage `fetch_data`: the logic is `squeezegen.stages.fetch_data.main` (also `squeezegen fetch-data`)."""

from squeezegen.stages import run_stage_script

if __name__ == "__main__":
    run_stage_script("fetch_data")
