"""Run a tiny training in a subprocess for the training tests.

    python -m tests.training.train_worker LABELS MODEL_DIR STEPS [--resume] [--pause-at N --marker F]
        [--replicas N --strategy S]
"""
import argparse
import os
import sys
import time


def main():
    p = argparse.ArgumentParser()
    p.add_argument("labels")
    p.add_argument("model_dir")
    p.add_argument("steps", type=int)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--pause-at", type=int, default=None)
    p.add_argument("--marker", default=None)
    p.add_argument("--replicas", type=int, default=1)
    p.add_argument("--strategy", default=None)
    a = p.parse_args()
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    if a.replicas > 1 and backend == "tensorflow":
        import tensorflow as tf

        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * a.replicas)
    import keras

    from synthseg.nn.unet import UNetOptions
    from synthseg.training.synthetic import TrainingOptions, training

    class Pause(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if a.pause_at and int(self.model.optimizer.iterations) == a.pause_at:
                open(a.marker, "w").close()
                time.sleep(600)  # the test kills us here

    options = TrainingOptions(steps=a.steps, steps_per_checkpoint=2, seed=3, learning_rate=1e-3,
                              progress=False, tensorboard=False, deterministic=True, strategy=a.strategy)
    r = training(a.labels, a.model_dir, unet=UNetOptions(n_levels=2, base_features=4), options=options,
                 resume=a.resume, callbacks=[Pause()], output_shape=(16, 16, 16),
                 generation_labels=[0, 2, 3, 41, 42], lr_pairs=[(2, 41), (3, 42)])
    print(f"done step={r.step} replicas={getattr(keras.distribution, 'list_devices')() if a.strategy == 'data_parallel' else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
