"""pytorchexample: A Flower / PyTorch app (Flower's quickstart-pytorch task, local data)."""

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from datasets import Dataset
from flwr_datasets.partitioner import IidPartitioner
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.transforms import Compose, Normalize, ToTensor

from pytorchexample.variants import mnist


class Net(nn.Module):
    """Model (simple CNN adapted from 'PyTorch: A 60 Minute Blitz')"""

    def __init__(self):
        super(Net, self).__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = x.view(-1, 16 * 5 * 5)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


def build_model(name: str) -> nn.Module:
    """The example's Net, or torchvision's ResNet-18 (BatchNorm throughout) for the same images."""
    if name == "resnet18":
        torch.manual_seed(0)
        return torchvision.models.resnet18(num_classes=10)
    return Net()


def mnist_as_cifar(data_dir: str, split: str, count: int) -> Dataset:
    """The first ``count`` MNIST images of ``split`` as 32 x 32 RGB PIL images: the example's columns."""
    images, labels = mnist(data_dir, split, count)
    padded = np.pad(images, ((0, 0), (2, 2), (2, 2)))
    return Dataset.from_dict({"img": [Image.fromarray(np.stack([p] * 3, -1)) for p in padded],
                              "label": labels.astype(int).tolist()})


partitioner = None  # Cache the partitioner
pytorch_transforms = Compose([ToTensor(), Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))])


def apply_transforms(batch):
    """Apply transforms to the partition from FederatedDataset."""
    batch["img"] = [pytorch_transforms(img) for img in batch["img"]]
    return batch


def load_data(partition_id: int, num_partitions: int, batch_size: int, data_dir: str):
    """Load partition data."""
    global partitioner
    if partitioner is None:
        partitioner = IidPartitioner(num_partitions=num_partitions)
        partitioner.dataset = mnist_as_cifar(data_dir, "train", 100 * num_partitions)
    partition = partitioner.load_partition(partition_id)
    # Divide data on each node: 80% train, 20% test
    partition_train_test = partition.train_test_split(test_size=0.2, seed=42)
    # Construct dataloaders
    partition_train_test = partition_train_test.with_transform(apply_transforms)
    trainloader = DataLoader(partition_train_test["train"], batch_size=batch_size, shuffle=True)
    testloader = DataLoader(partition_train_test["test"], batch_size=batch_size)
    return trainloader, testloader


def load_centralized_dataset(data_dir: str):
    """Load test set and return dataloader."""
    dataset = mnist_as_cifar(data_dir, "test", 200).with_format("torch").with_transform(apply_transforms)
    return DataLoader(dataset, batch_size=128)


def train(net, trainloader, epochs, lr, device):
    """Train the model on the training set."""
    net.to(device)  # move model to GPU if available
    criterion = torch.nn.CrossEntropyLoss().to(device)
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    net.train()
    running_loss = 0.0
    for _ in range(epochs):
        for batch in trainloader:
            images = batch["img"].to(device)
            labels = batch["label"].to(device)
            optimizer.zero_grad()
            loss = criterion(net(images), labels)
            loss.backward()
            optimizer.step()
            running_loss += loss.item()
    avg_trainloss = running_loss / (epochs * len(trainloader))
    return avg_trainloss


def test(net, testloader, device):
    """Validate the model on the test set."""
    net.to(device)
    criterion = torch.nn.CrossEntropyLoss()
    correct, loss = 0, 0.0
    with torch.no_grad():
        for batch in testloader:
            images = batch["img"].to(device)
            labels = batch["label"].to(device)
            outputs = net(images)
            loss += criterion(outputs, labels).item()
            correct += (torch.max(outputs.data, 1)[1] == labels).sum().item()
    accuracy = correct / len(testloader.dataset)
    loss = loss / len(testloader)
    return loss, accuracy
