"""Data-set constants that both the model (its pretrained configs) and the data package need."""

#: Per-channel mean and std of the CIFAR10 / CIFAR100 training images (RGB, in [0, 1]).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
#: CIFAR10's class names in label order (CIFAR10-DVS uses the same classes and order).
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
