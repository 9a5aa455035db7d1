"""Two Pulsar Functions for Iris, in one file (deploy each with its --classname):
- IrisPredict, single prediction: input "5.1,3.5,1.4,0.2" -> output "setosa";
- IrisPredictBulk, bulk prediction: rows separated by ':' -> comma-joined class names,
  e.g. "5.1,3.5,1.4,0.2:6.7,3.0,5.2,2.3" -> "setosa,virginica".

Written against the Pulsar Functions API only (`pulsar.Function`, the context's user config,
logger and metrics), so it runs unmodified on Pulsar's functions worker or on mlplatform's Ray
runtime. User config: model_path, model_sha256 (checked before loading), feature_order and
label_names (the model's metadata). Input values come in the canonical Iris order below and are
reordered to the model's feature order.
"""

import hashlib

import skops.io
from pulsar import Function

IRIS_ORDER = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


class IrisPredict(Function):
    def __init__(self):
        self.model = None

    def load(self, context):
        """Load and verify the model once per instance, not per message."""
        if self.model is not None:
            return
        path = context.get_user_config_value("model_path")
        with open(path, "rb") as handle:
            data = handle.read()
        if hashlib.sha256(data).hexdigest() != context.get_user_config_value("model_sha256"):
            raise ValueError(f"model file {path} does not match its recorded SHA-256")
        types = skops.io.get_untrusted_types(data=data)
        if any(not t.startswith(("sklearn.", "numpy.")) for t in types):
            raise ValueError(f"model file {path} holds types outside scikit-learn: {types}")
        self.model = skops.io.loads(data, trusted=types)
        order = context.get_user_config_value("feature_order").split(",")
        self.columns = [IRIS_ORDER.index(name) for name in order]
        self.labels = context.get_user_config_value("label_names").split(",")
        # Optional: the platform's dataset ranges ("name:min:max,..."); a value outside is refused.
        ranges = context.get_user_config_value("feature_ranges") or ""
        triples = [r.split(":") for r in ranges.split(",") if r]
        bounds = {name: (float(lo), float(hi)) for name, lo, hi in triples}
        self.bounds = [bounds.get(name) for name in IRIS_ORDER]
        version = context.get_user_config_value("model_version")
        context.get_logger().info("loaded model version %s", version)

    def check(self, values):
        for name, value, bound in zip(IRIS_ORDER, values, self.bounds, strict=True):
            if bound and not bound[0] <= value <= bound[1]:
                raise ValueError(
                    f"out_of_range: {name}={value} is outside [{bound[0]}, {bound[1]}]"
                )
        return values

    def predict(self, rows):
        ordered = [[row[i] for i in self.columns] for row in rows]
        return [self.labels[int(p)] for p in self.model.predict(ordered)]

    @staticmethod
    def parse(text):
        values = [float(v) for v in text.split(",")]
        if len(values) != len(IRIS_ORDER):
            raise ValueError(f"expected {len(IRIS_ORDER)} comma-separated numbers, got {text!r}")
        return values

    def process(self, input, context):
        self.load(context)
        context.record_metric("rows", 1)
        return self.predict([self.check(self.parse(input))])[0]


class IrisPredictBulk(IrisPredict):
    def process(self, input, context):
        self.load(context)
        rows = [self.check(self.parse(part)) for part in input.split(":")]
        context.record_metric("rows", len(rows))
        return ",".join(self.predict(rows))
