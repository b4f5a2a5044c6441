import keras
import numpy as np

rng = np.random.default_rng(0)
bn = keras.layers.BatchNormalization()             # features on the last axis
x = (5 * rng.normal(size=(1, 3)) + 12).astype("float32")
batch_a = np.concatenate([x, 5 * rng.normal(size=(3, 3)) + 12]).astype("float32")
batch_b = np.concatenate([x, 5 * rng.normal(size=(7, 3)) + 30]).astype("float32")

train_a = bn(batch_a, training=True).numpy()[0]    # batch statistics
train_b = bn(batch_b, training=True).numpy()[0]
eval_a = bn(batch_a, training=False).numpy()[0]    # moving statistics
eval_b = bn(batch_b, training=False).numpy()[0]
eval_alone = bn(x, training=False).numpy()[0]

train_diff = np.abs(train_a - train_b).max()
eval_diff = max(np.abs(eval_a - eval_b).max(), np.abs(eval_a - eval_alone).max())
print("training=True,  x in batch A:", train_a.round(4))
print("training=True,  x in batch B:", train_b.round(4))
print("training=False, x in batch A:", eval_a.round(4))
print("training=False, x in batch B:", eval_b.round(4))
print("training=False, x alone     :", eval_alone.round(4))
print(f"max |A - B| with training=True: {train_diff:.4f};  with training=False (A, B, alone): {eval_diff:.1e}")
