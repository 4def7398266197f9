"""DVC stage `finetune_lora`: the logic is `squeezegen.stages.finetune_lora.main` (also `squeezegen finetune-lora`)."""

from squeezegen.stages import run_stage_script

if __name__ == "__main__":
    run_stage_script("finetune_lora")
