"""Train the Llama 4 model on TinyStories (or any text): `python train.py --preset tiny`.

The training loop arrives with its issue; for now this parses and checks the settings.
"""

import config


def main(argv=None):
    name, (model_args, train_args) = config.parse_args(
        [config.ModelArgs, config.TrainArgs], argv, description=__doc__)
    print(f"preset {name}: {model_args}\n{train_args}")


if __name__ == "__main__":
    main()
