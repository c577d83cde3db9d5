"""Candidate patient-level models, their inputs, the rule that chooses among them, the routing.

Input form (one row per patient)
--------------------------------
Every pipeline takes a *cohort frame*: a DataFrame indexed by patient ID with the clinical
columns ``AGE`` (years), ``LYMPH_COUNT`` (10⁹/L), ``GENDER`` ("M"/"F"/NA), optionally
``Bag_Heterogeneity_PixelDispersion``, and ``CELLS``: each patient's cell table (a
DataFrame with ``QC_STATUS`` and the feature columns of :mod:`cellfeat.features`). Build
it with :func:`cohort_frame`. Rows are patients, so ``cross_val_score``, ``GridSearchCV``
and ``clone`` work unchanged and a split never puts one patient's cells on both sides.

Candidates (:data:`CANDIDATES`, built by :func:`make_pipeline`), simplest first
-------------------------------------------------------------------------------
The order of :data:`CANDIDATES` *is* the complexity order used to break ties (fewer inputs,
then linear before stacked before trees before MIL/CNN):

``clinical-logreg``          age, log lymphocyte count (gender only if inner CV keeps it),
                             logistic regression, C chosen by inner CV (the comparator,
                             and the fallback of a patient without usable cells)
``mean-ridge``               image only: the per-patient mean of every cell feature, L2
                             logistic regression with a fixed strong penalty (the fallback
                             of a patient whose age or count is missing)
``clinical+mean-ridge``      both, in one penalised logistic regression
``clinical+zonemean-ridge``  the same, the image term entering only inside the overlap zone
``clinical+mean+celltype-ridge``  the same, plus the share of reactive-looking cells
                             (:class:`~cellfeat.models.celltype.CellTypeScore`, cross-fitted)
``meanstd-logreg``           image only: per-patient mean and SD of every cell feature,
                             L2 logistic regression, C by inner CV
``clinical+meanstd-logreg``  both, in one regularised logistic regression
``late-fusion``              out-of-fold logit of ``meanstd-logreg`` stacked with the
                             clinical variables in a logistic regression
``gated-mixture``            clinical and image experts mixed by a gate on clinical data
                             (after Sahasrabudhe et al. 2021)
``bags-logreg|xgb|lgbm``     image only: full bag statistics + heterogeneity scores
``clinical+bags-...``        both
``clinical+misvm-xgb``       MI-SVM instance scores (cross-fitted) stacked with clinical data
``cnn``                      the CNN image expert alone (needs torch; :mod:`cellfeat.cnn`)
``clinical+bags+cnn-xgb``    clinical + bag statistics of hand-crafted and CNN cell features

:data:`DEFAULT_CANDIDATES` is the small set the selection rule chooses from by default,
frozen with the reason for each in :mod:`cellfeat.models.candidates`.

From score to call
------------------
Raw candidates handle class imbalance with class weights. :class:`CalibratedDecision`
turns one into a call a lab can act on, from *inner* out-of-fold predictions on the
training patients only: Platt scaling gives a calibrated P(tumoral); the decision
threshold is the training prevalence of tumoral patients (for a calibrated probability
this is the threshold that maximises balanced accuracy: call tumoral when
p/(1-p) > π/(1-π)); the triage threshold is the highest one that still sends a target
share of the tumoral training patients to cytometry, never above the decision threshold.
:class:`ModelChoice` is the selection rule: every candidate gets the same repeated inner
folds; the simplest candidate whose calibrated inner log-loss is within one standard error
of the best wins; calls are routed to a fallback where inputs are missing
(:mod:`cellfeat.models.routing`). The nested-CV estimate of :mod:`cellfeat.evaluation` runs
this very estimator inside each outer fold, and the saved model is the same estimator
fitted on all training patients.

Stacking (``late-fusion``, ``clinical+misvm-xgb``, ``gated-mixture``) follows
scikit-learn's ``StackingClassifier``: the second stage learns from out-of-fold
first-stage outputs, and at prediction time the first stage is the model refitted on all
training patients. A refitted model has seen ~1.5x the patients of a fold model, so its
outputs on new patients can be slightly more confident than the out-of-fold outputs the
second stage was fitted to; the outer CV measures the whole construction, drift included.
Checked for ``MILFeatures`` (MI-SVM, C = 0.1) on the 120 dev patients (feature set of
commit 17d9b2e), 3 of 5 stratified folds, class means of the out-of-fold training features
vs the refitted SVM's features on held-out patients: ``MIL_Score_Max`` reactive −0.29 vs
−0.41, tumoral 0.50 vs 0.48 (training SD 0.85 / 1.08); ``MIL_Score_TopKMean`` −0.72 vs
−0.79, −0.01 vs −0.02; ``MIL_Score_Mean`` shifts down for both classes (−1.75 vs −1.93,
−1.32 vs −1.44; SD 0.33), a shared offset of up to half an SD that keeps the class gap
(0.43 vs 0.50). So the refit is on the out-of-fold scale for the max and top-k scores and
slightly offset for the mean score; the outer CV of the stacked candidate includes it.

Modules
-------
frame       the cohort frame (:func:`cohort_frame`)
inputs      patient-level inputs: clinical, bag statistics, MIL scores
celltype    a per-cell reactive score learnt from patient labels, and its share per patient
learners    the learners and the clinical baseline ``ClinicalLogReg``
stacking    ``ImageLogit`` (late fusion) and ``GatedMixture``
candidates  the candidate names, their order, :func:`make_pipeline`
selection   ``ModelChoice``, the selection rule
routing     which model calls each patient
The overlap zone is :mod:`cellfeat.zone`; the calibrated call itself (:class:`CalibratedDecision`) is :mod:`cellfeat.decision`.
"""

from ..decision import CalibratedDecision
from .candidates import (CANDIDATES, CNN_CANDIDATES, DEFAULT_CANDIDATES, FALLBACKS,
                         INTERNAL_CV_DEPTH, REFERENCE_CANDIDATES, available_candidates, cv_depth,
                         make_pipeline)
from .frame import cohort_frame
from .celltype import CellTypeScore
from .inputs import CLINICAL_NAMES, CellBagFeatures, ClinicalFeatures, MILFeatures, ZoneMeans
from .learners import BalancedXGBClassifier, ClinicalLogReg
from .routing import routed_calls, routes
from .selection import ModelChoice, one_se_choice
from .stacking import GatedMixture, ImageLogit

__all__ = ["cohort_frame", "ClinicalFeatures", "CellBagFeatures", "MILFeatures",
           "BalancedXGBClassifier", "GatedMixture", "make_pipeline", "CANDIDATES",
           "CNN_CANDIDATES", "available_candidates", "CLINICAL_NAMES", "ImageLogit",
           "CalibratedDecision", "ModelChoice", "ClinicalLogReg", "DEFAULT_CANDIDATES",
           "INTERNAL_CV_DEPTH", "REFERENCE_CANDIDATES", "cv_depth", "FALLBACKS", "ZoneMeans",
           "routed_calls", "routes", "one_se_choice", "CellTypeScore"]
