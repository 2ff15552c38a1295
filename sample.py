"""Sample stories from a trained checkpoint: `python sample.py --ckpt checkpoints/<run>`.

Generation arrives with its issue; for now this parses and checks the settings.
"""

import config


def main(argv=None):
    _, (args,) = config.parse_args([config.SampleArgs], argv, description=__doc__)
    print(args)


if __name__ == "__main__":
    main()
