// staging_ring.cpp — to be written
