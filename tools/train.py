"""Train a model from a config: ``python tools/train.py CONFIG [--work-dir D] [--resume [CKPT]]
[--amp] [--cfg-options k=v ...] [--launcher {none,pytorch,slurm,mpi}]``."""

from aerialseg.engine import train_main

if __name__ == "__main__":
    train_main()
