import keras
import numpy as np

# The same 300 batches, moved to channels-last (N, H, W, C) for Keras.
rng = np.random.default_rng(0)
scale, shift = np.array([5.0, 0.5]), np.array([12.0, -3.0])
batches = (rng.normal(size=(300, 4, 2, 3, 3)) * scale[:, None, None]
           + shift[:, None, None]).astype("float32")

bn = keras.layers.BatchNormalization()             # momentum=0.99, epsilon=1e-3
run_mean, run_var = [], []
for xb in batches:
    bn(xb.transpose(0, 2, 3, 1), training=True)    # updates moving_mean/moving_variance
    run_mean.append(bn.moving_mean.numpy().copy())
    run_var.append(bn.moving_variance.numpy().copy())
run_mean, run_var = np.array(run_mean), np.array(run_var)
print("epsilon:", bn.epsilon, " momentum:", bn.momentum)
print("moving_variance after 5 batches:", run_var[4])
