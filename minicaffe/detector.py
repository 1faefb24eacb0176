"""pycaffe's ``caffe.detector`` module name (``from caffe.detector import Detector``);
the Detector itself is in minicaffe.classifier, beside the Classifier it shares code with."""
from .classifier import Detector  # noqa: F401
