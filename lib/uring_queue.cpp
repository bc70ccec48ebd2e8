// uring_queue.cpp — to be written
