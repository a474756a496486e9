"""The coded vocabulary of a triage SR, in one place, shared by the writer and the reader.

Standard codes are used wherever one says exactly what we mean; the rest live in
the private coding scheme ``99TRIAGE`` (a "99" prefix is the DICOM convention
for private schemes, PS3.16 section 8.2), which the SR describes in its Coding
Scheme Identification Sequence. Meanings of the private codes:

=============  ===============================================  ========================
code value     meaning                                          used as
=============  ===============================================  ========================
URGENT         Urgent finding in triage profile                 CODE name (Yes/No)
AIASSESS       AI assessment                                    CODE name, summary group
PROVIDED       AI assessment provided                           value of AIASSESS
NOASSESS       No AI assessment                                 value of AIASSESS
NOAIREASON     Reason for no AI assessment                      CODE and TEXT name
HIGH           High (worklist priority HIGH, urgent)            value of Priority
MEDIUM         Medium (worklist priority MEDIUM, routine)       value of Priority
DISCLAIMER     Intended use disclaimer                          TEXT name
TESTMODEL      Test model warning                               TEXT name
BANDLOW        Indeterminate band lower limit                   NUM name, finding group
BANDHIGH       Indeterminate band upper limit                   NUM name, finding group
PRIOKEPT       Priority kept from an earlier assessment         TEXT name, summary group
DOMAIN         In-domain score                                  NUM name, image group
EVALUATED      Evaluated for findings                           CODE name (Yes/No), image group
PREPROC        Image preprocessing                              TEXT name, image group
OPCALIB        Operating point calibration                      TEXT name, finding group
=============  ===============================================  ========================

Why these standard codes:

* finding states: SCT 52101004 "Present", SCT 260415000 "Not detected" and
  SCT 82334004 "Indeterminate". "Not detected" is a SNOMED CT qualifier value
  (widely used for lab results) that states what the model did, not that the
  finding is absent; SCT "Absent" (272519000) is never written (rule 5).
* the score is SCT 246262008 "Score", a model output without a physical
  unit: UCUM "1" (no units). It is a zero-shot softmax over two prompt
  classes, not a calibrated probability, hence not DCM "Probability".
  The decision threshold is DCM 122411 "Threshold Value", same unit.
* the finding's "Threshold Value" is the value that decides "present" (a score
  above it); the indeterminate band's limits are reported beside it, so the
  report shows exactly the rule that was applied.
* beside each finding's threshold, "Operating point calibration" says in words
  whether that threshold was calibrated on local data (and on which evaluation).
* one "AI triage image" group per image given to the model carries its
  in-domain score, whether it was evaluated for findings, and its preprocessing.
* priority is named by SCT 260870009 "Priority"; its values are private codes
  whose code values are exactly the UPS enumerated values HIGH and MEDIUM.
* urgency uses SCT "Yes"/"No" (CID 230).
* Procedure Reported defaults to SCT 363679005 "Imaging procedure" (CID 100),
  since AIR wants the imaging procedure analysed, not the algorithm.
* the purpose of reference of the algorithm in Contributing Equipment is the
  one IHE AIR Rev 1.1 section 6.5.3.1 prescribes: (Newcode1, 99IHE,
  "Processing Algorithm").
"""

from __future__ import annotations

from highdicom.sr import CodedConcept

from .result import PRIORITY_HIGH, PRIORITY_MEDIUM, FindingState

PRIVATE_SCHEME = "99TRIAGE"
PRIVATE_SCHEME_NAME = "triage-node private codes"
PRIVATE_SCHEME_ORGANIZATION = "triage-node"


def _private(value: str, meaning: str) -> CodedConcept:
    return CodedConcept(value=value, scheme_designator=PRIVATE_SCHEME, meaning=meaning)


def _sct(value: str, meaning: str) -> CodedConcept:
    return CodedConcept(value=value, scheme_designator="SCT", meaning=meaning)


STATE_CODES: dict[FindingState, CodedConcept] = {
    FindingState.PRESENT: _sct("52101004", "Present"),
    FindingState.NOT_DETECTED: _sct("260415000", "Not detected"),
    FindingState.INDETERMINATE: _sct("82334004", "Indeterminate"),
}

SCORE = _sct("246262008", "Score")
THRESHOLD = CodedConcept(value="122411", scheme_designator="DCM", meaning="Threshold Value")
NO_UNITS = CodedConcept(value="1", scheme_designator="UCUM", meaning="no units")

URGENT = _private("URGENT", "Urgent finding in triage profile")
YES = _sct("373066001", "Yes")
NO = _sct("373067005", "No")

AI_ASSESSMENT = _private("AIASSESS", "AI assessment")
ASSESSMENT_PROVIDED = _private("PROVIDED", "AI assessment provided")
NO_ASSESSMENT = _private("NOASSESS", "No AI assessment")
NO_ASSESSMENT_REASON = _private("NOAIREASON", "Reason for no AI assessment")

PRIORITY = _sct("260870009", "Priority")
PRIORITY_CODES: dict[str, CodedConcept] = {
    PRIORITY_HIGH: _private("HIGH", "High (worklist priority HIGH, urgent)"),
    PRIORITY_MEDIUM: _private("MEDIUM", "Medium (worklist priority MEDIUM, routine)"),
}

DISCLAIMER = _private("DISCLAIMER", "Intended use disclaimer")
BAND_LOW = _private("BANDLOW", "Indeterminate band lower limit")
BAND_HIGH = _private("BANDHIGH", "Indeterminate band upper limit")
PRIORITY_KEPT = _private("PRIOKEPT", "Priority kept from an earlier assessment")
DOMAIN_SCORE = _private("DOMAIN", "In-domain score")
EVALUATED = _private("EVALUATED", "Evaluated for findings")
PREPROCESSING = _private("PREPROC", "Image preprocessing")
CALIBRATION = _private("OPCALIB", "Operating point calibration")
TEST_MODEL = _private("TESTMODEL", "Test model warning")

IMAGING_PROCEDURE = _sct("363679005", "Imaging procedure")

AIR_PROCESSING_ALGORITHM = CodedConcept(value="Newcode1", scheme_designator="99IHE", meaning="Processing Algorithm")

#: Tracking identifier (TID 4108, human readable part) of the per-study summary group.
SUMMARY_TRACKING_ID = "AI triage summary"
#: ... and of each per-image group.
IMAGE_TRACKING_ID = "AI triage image"


def priority_kept_text(sr_sop_instance_uid: str) -> str:
    """The sentence a kept HIGH carries; the reader takes the UID back from its end."""
    return (
        f"Priority kept HIGH from the earlier assessment {sr_sop_instance_uid}: only a person clears a raised priority."
    )


DISCLAIMER_TEXT = (
    "Research use only. Not for diagnostic use. This report was produced "
    "automatically by a zero-shot AI model and has not been reviewed by a "
    'clinician. "Not detected" means only that the model did not detect the '
    "finding; it does not mean the finding is absent or that the study is normal."
)

TEST_MODEL_TEXT = (
    "WARNING: TEST MODEL. These results were produced by a randomly initialised "
    "test model, not by trained MedSigLIP weights. The scores are meaningless "
    "and must not be used for any purpose."
)

TEST_MODEL_SERIES_TAG = "TEST MODEL - SCORES MEANINGLESS"
