"""kd's distillers: one file each (Hinton's KD, DKD, FitNet, AT), all of the one API in base.py."""
