// extent_checksum.cpp — to be written
