import keras
import numpy as np
import tensorflow as tf

keras.utils.set_random_seed(0)
model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4),
                          keras.layers.BatchNormalization(), keras.layers.ReLU(),
                          keras.layers.Dense(1)])
bn = model.layers[1]
print("trainable weights:    ", [w.name for w in bn.trainable_weights])
print("non-trainable weights:", [w.name for w in bn.non_trainable_weights])

rng = np.random.default_rng(0)
x = (5 * rng.normal(size=(16, 3)) + 12).astype("float32")
y = rng.normal(size=(16, 1)).astype("float32")
opt = keras.optimizers.SGD(0.1)
snapshot = lambda: {w.name: w.numpy().copy() for w in bn.weights}
changed = lambda before: [w.name for w in bn.weights if not np.array_equal(before[w.name], w.numpy())]

before = snapshot()                                # 1. gradient step, inference-mode forward
with tf.GradientTape() as tape:
    loss = keras.ops.mean((model(x, training=False) - y) ** 2)
grads = tape.gradient(loss, model.trainable_weights)
opt.apply(grads, model.trainable_weights)
print("changed by an SGD step (training=False):  ", changed(before))

before = snapshot()                                # 2. forward only, no tape, no optimizer
model(x, training=True)
print("changed by a forward pass (training=True):", changed(before))
