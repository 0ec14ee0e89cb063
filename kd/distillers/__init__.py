"""kd's distillers: one file each (Hinton's KD, DKD, FitNet, AT, and RepDistiller's and mdistiller's feature methods),
all of the one API in base.py; common.py holds what they share."""
