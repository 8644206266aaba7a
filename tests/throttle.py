"""A test-only callback that slows a run down, so that a test can signal it mid-way (it holds no state, so a
throttled run trains exactly like an unthrottled one)."""

import time

import lightning as L


class Throttle(L.Callback):
    def __init__(self, seconds: float = 0.05):
        self.seconds = seconds

    def on_train_batch_end(self, *args, **kwargs) -> None:
        time.sleep(self.seconds)

    def on_predict_batch_end(self, *args, **kwargs) -> None:
        time.sleep(self.seconds)
