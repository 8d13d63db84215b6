"""
Choosing the alarm threshold
============================

``score_samples`` ranks the rows; the threshold ``offset_`` decides which of
them ``predict`` flags. The detector sets a first threshold at fit time from
``contamination``. ``set_threshold`` moves it afterwards to meet a target on
rows the model has not trained on: a share of the defects to catch
(``recall``), or a share of normal rows that may raise a false alarm
(``false_alarm_rate``).
"""

# %%
# Training and validation rows
# ----------------------------
# The threshold is set on a validation split, not on the training rows: the
# network has seen those, so they look more normal than new rows do.
# With 25 labeled defects, 8 of them go to the validation rows.
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import MinMaxScaler

from sk_cae import ContrastiveAEDetector
from sk_cae.datasets import load_digits_scenario

split = load_digits_scenario(n_labeled=25, seed=0)
X_fit, X_valid, y_fit, y_valid = train_test_split(
    split.X_train,
    split.y_train,
    test_size=0.3,
    stratify=split.y_train,
    random_state=0,
)
model = make_pipeline(
    MinMaxScaler(), ContrastiveAEDetector(max_epochs=20, random_state=0)
)
model.fit(X_fit, y_fit)
detector = model[-1]
print(f"{y_valid.sum()} labeled defects among {len(y_valid)} validation rows")


# %%
# What a threshold does on the test rows
# --------------------------------------
# ``offset_`` is on the ``score_samples`` scale; the anomaly threshold is its
# negative. A small helper reports what the current threshold flags among
# the test rows, whose true roles are known here.
def report(name):
    flagged = model.predict(split.X_test) == -1
    role = split.role_test
    print(
        f"{name:<28} threshold {-detector.offset_:.3f}: "
        f"{flagged[role == 'defect'].sum():>2} of {(role == 'defect').sum()} "
        f"defects, {flagged[role == 'other'].sum():>2} of "
        f"{(role == 'other').sum()} other outliers and "
        f"{flagged[role == 'normal'].sum():>3} of {(role == 'normal').sum()} "
        "normal rows flagged"
    )


report('contamination="auto"')

# %%
# ``set_threshold`` is a method of the detector, the last step, so it takes
# the rows as the detector receives them, after the pipeline's scaler.
X_valid_scaled = model[:-1].transform(X_valid)
thresholds = {'contamination="auto"': -detector.offset_}
for target in [
    {"recall": 0.9},
    {"recall": 0.5},
    {"false_alarm_rate": 0.01},
    {"false_alarm_rate": 0.05},
]:
    detector.set_threshold(X_valid_scaled, y_valid, **target)
    ((name, value),) = target.items()
    thresholds[f"{name}={value}"] = -detector.offset_
    report(f"{name}={value}")

# %%
# ``recall=0.9`` picks the highest threshold that flags at least 90% of the
# validation defects. ``false_alarm_rate=0.01`` picks the lowest threshold
# that flags at most 1% of the validation rows not labeled as defects. The
# validation rows contain only 8 labeled defects, so a recall target moves in
# steps of one defect, and the recall reached on the test rows differs from
# the target.
#
# Say the inspectors can check about 1% of the parts: keep that threshold.
detector.set_threshold(X_valid_scaled, y_valid, false_alarm_rate=0.01)
report("kept: false_alarm_rate=0.01")

# %%
# The precision-recall curve
# --------------------------
# Every threshold is a point on the defect precision-recall curve of the
# test rows. ``DefectPrecisionRecallDisplay`` draws it, ranking rows by their
# anomaly score, and marks the threshold in use with a circle. The squares,
# added by hand, are the other thresholds tried above.
import matplotlib.pyplot as plt

from sk_cae.plotting import DefectPrecisionRecallDisplay

display = DefectPrecisionRecallDisplay.from_estimator(
    model, split.X_test, split.y_test, name="contrastive autoencoder"
)
anomaly = -model.score_samples(split.X_test)
is_defect = split.y_test == 1
for label, threshold in thresholds.items():
    if label == "false_alarm_rate=0.01":
        continue
    flagged = anomaly > threshold
    recall = (flagged & is_defect).sum() / is_defect.sum()
    precision = (flagged & is_defect).sum() / max(flagged.sum(), 1)
    display.ax_.plot(recall, precision, "s", label=label)
display.ax_.legend(fontsize="small")
plt.show()
