// ringckpt.cpp — to be written
