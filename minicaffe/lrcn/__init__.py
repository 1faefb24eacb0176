"""The LRCN applications: image captioning (captioner), activity recognition
(video_classify), BLEU scoring (bleu) and the data sets they train on (datasets/).

They import the engine and the command helpers, never the other way.
"""
