// coordinator.cpp — to be written
