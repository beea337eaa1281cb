"""Run one prefix-tuning experiment: ``python train.py [hydra overrides]`` (see conf/train.yaml)."""

from prefixtune.cli import main

if __name__ == "__main__":
    main()
