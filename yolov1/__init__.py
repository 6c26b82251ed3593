"""yolov1: a paper-faithful YOLOv1 ("You Only Look Once", Redmon et al., arXiv 1506.02640) for PASCAL VOC.

A pure library: box ops, grid-target encoding/decoding, the Darknet network, the paper's loss, VOC parsing, the
dataset and augmentation, the VOC devkit mAP, training, evaluation and prediction. It never imports the pipeline
tools (prefect, mlflow, dvc, great_expectations, yaml); those live in `pipelines/`.
"""

__version__ = "0.1.0"
