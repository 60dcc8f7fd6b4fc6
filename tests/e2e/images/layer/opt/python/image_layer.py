NAME = "image"
