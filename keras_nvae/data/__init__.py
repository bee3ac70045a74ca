"""Data for NVAE: the registry of dataset facts and the `tf.data` image pipelines.

`registry` holds what is known about each dataset; `arrays`, `folders` and
`tfds` build pipelines from in-memory arrays and files, folders of images and
TensorFlow Datasets, on the shared stages of `pipeline`; `sources.make_dataset`
picks the right one for a data source. The public functions are importable
from here.

Example:

```python
from keras_nvae import data

train = data.make_dataset("digits", "train", batch_size=32)
```
"""

from keras_nvae.data.arrays import digits_arrays
from keras_nvae.data.arrays import from_numpy
from keras_nvae.data.arrays import load_digits
from keras_nvae.data.folders import load_image_folder
from keras_nvae.data.pipeline import AUTOTUNE
from keras_nvae.data.pipeline import dynamic_binarize
from keras_nvae.data import registry
from keras_nvae.data.image_files import BadImageFileError
from keras_nvae.data.sources import make_dataset
from keras_nvae.data.tfds import DatasetNotAvailableError
from keras_nvae.data.tfds import load_tfds
