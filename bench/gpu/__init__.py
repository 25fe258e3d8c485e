"""The prepared GPU check: a bundle built here (``bundle``) and the script run on the lent GPU (``check``)."""
