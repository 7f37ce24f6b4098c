"""Input pipeline throughput vs training throughput of a small CNN student.

For each case, builds one `keras_edu.data.make_pipeline` and measures:

* pipeline, cold: images/s of the first pass (decoding + filling the cache);
* pipeline, warm: images/s of later passes (cache + shuffle + augment +
  batch + normalise), iterating batches with no model;
* training: images/s of `model.fit` on the same pipeline (after 3 warm-up
  steps, so compilation and the cache fill are excluded), for a 3-conv
  student.

The pipeline should be at least 3x faster than training (warm ratio), so
that it never starves the model. Cases: (a) Fashion-MNIST read from local
files (`load_fashion_mnist`), (b) a folder of generated 64x64 JPEGs in 10
classes (`from_directory`), also decoded at 80x80 and randomly cropped to
64x64 (`augment="resize_crop"`). Runs on the current KERAS_BACKEND:

    KERAS_BACKEND=jax python benchmarks/input_pipeline.py
"""

import argparse
import datetime
import os
import platform
import tempfile
import time

import keras
import numpy as np

from keras_edu import data


def student(input_shape, num_classes):
    """A small 3-conv CNN student."""
    return keras.Sequential(
        [
            keras.Input(input_shape),
            keras.layers.Conv2D(
                32, 3, strides=2, padding="same", activation="relu"
            ),
            keras.layers.Conv2D(
                64, 3, strides=2, padding="same", activation="relu"
            ),
            keras.layers.Conv2D(
                128, 3, strides=2, padding="same", activation="relu"
            ),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(num_classes),
        ]
    )


def iterate(dataset):
    """Images/s of one full pass over `dataset`."""
    start, images = time.perf_counter(), 0
    for batch_images, _ in dataset:
        images += int(batch_images.shape[0])
    return images / (time.perf_counter() - start)


class StepTimer(keras.callbacks.Callback):
    """Times the steps after `warmup` (which include compilation/tracing).

    The clock stops at `on_epoch_end`, where Keras reads the metrics and so
    waits for any asynchronously dispatched (JAX) steps to finish.
    """

    def __init__(self, warmup):
        super().__init__()
        self.warmup = warmup

    def on_train_batch_end(self, batch, logs=None):
        if batch == self.warmup - 1:
            self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds = time.perf_counter() - self.start


def measure(source, batch_size, augment, args, image_shape=None):
    image_shape = image_shape or source.image_shape
    pipeline = data.make_pipeline(
        source,
        batch_size,
        training=True,
        augment=augment,
        seed=0,
        image_shape=image_shape,
    )
    cold = iterate(pipeline)  # Fills the cache.
    warm = float(
        np.median([iterate(pipeline) for _ in range(args.warm_passes)])
    )
    model = student(image_shape, source.num_classes)
    model.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    warmup, steps = 3, args.train_steps
    timer = StepTimer(warmup)
    model.fit(
        pipeline.repeat(),
        steps_per_epoch=warmup + steps,
        epochs=1,
        verbose=0,
        shuffle=False,
        callbacks=[timer],
    )
    train = steps * batch_size / timer.seconds
    return cold, warm, train


def write_jpegs(root, num_images, num_classes, size, seed=0):
    """Smooth random images (upscaled 8x8 noise) as JPEGs, like photos."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for i in range(num_images):
        folder = os.path.join(root, f"class_{i % num_classes:02d}")
        os.makedirs(folder, exist_ok=True)
        small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize((size, size), Image.BICUBIC)
        image.save(os.path.join(folder, f"{i:05d}.jpg"), quality=90)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--fashion-images", type=int, default=10_240)
    parser.add_argument("--jpeg-images", type=int, default=2_000)
    parser.add_argument("--warm-passes", type=int, default=3)
    parser.add_argument(
        "--train-steps", type=int, default=8, help="timed fit steps per case"
    )
    args = parser.parse_args()

    rows = []
    (x_train, y_train), _ = data.load_fashion_mnist()
    n = args.fashion_images
    fashion = data.from_arrays(
        x_train[:n], y_train[:n], class_names=data.FASHION_MNIST_CLASS_NAMES
    )
    rows.append(
        ("Fashion-MNIST 28x28x1, cifar aug",)
        + measure(fashion, args.batch_size, "cifar", args)
    )

    with tempfile.TemporaryDirectory() as root:
        start = time.perf_counter()
        write_jpegs(root, args.jpeg_images, 10, 64)
        seconds = time.perf_counter() - start
        print(f"wrote {args.jpeg_images} JPEGs in {seconds:.1f}s")
        start = time.perf_counter()
        folder = data.from_directory(root, image_size=(64, 64), seed=0)
        print(
            f"listed + validated {folder.size} files in "
            f"{time.perf_counter() - start:.1f}s"
        )
        rows.append(
            ("JPEG folder 64x64x3, cifar aug",)
            + measure(folder, args.batch_size, "cifar", args)
        )
        # Larger decoded images, resized and randomly cropped to 64x64.
        larger = data.from_directory(root, image_size=(80, 80), seed=0)
        rows.append(
            ("JPEG folder 80x80 -> 64x64x3, resize_crop",)
            + measure(
                larger,
                args.batch_size,
                "resize_crop",
                args,
                image_shape=(64, 64, 3),
            )
        )

    print(
        f"\nbackend={keras.backend.backend()} keras={keras.__version__} "
        f"cpus={os.cpu_count()} machine={platform.machine()} "
        f"batch_size={args.batch_size} date={datetime.date.today()}\n"
    )
    header = (
        "| case | pipeline cold img/s | pipeline warm img/s | "
        "training img/s | warm / training | >= 3x |"
    )
    print(header)
    print("|---|---:|---:|---:|---:|:---:|")
    for name, cold, warm, train in rows:
        ratio = warm / train
        print(
            f"| {name} | {cold:,.0f} | {warm:,.0f} | {train:,.0f} | "
            f"{ratio:.1f}x | {'yes' if ratio >= 3 else 'NO'} |"
        )


if __name__ == "__main__":
    main()
