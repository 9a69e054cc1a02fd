"""Dataset constants shared by the model configs and the data pipeline."""

# CIFAR-10 training-set channel statistics (the values in common use, on the lossless pixels).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR10_LABELS = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck')

# Training-set channel statistics of the other datasets (the values in common use).
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
SVHN_MEAN = (0.4377, 0.4438, 0.4728)
SVHN_STD = (0.1980, 0.2010, 0.1970)
TINY_IMAGENET_MEAN = (0.4802, 0.4481, 0.3975)
TINY_IMAGENET_STD = (0.2770, 0.2691, 0.2821)

# The Hugging Face organisation the zoo publishes under: repos are '<HUB_ORG>/<model>.<tag>'.
HUB_ORG = 'xsep-zoo'
