// ringckpt/filesystem.hpp — the file-system storage layer: FileSystemWriter
// (filesystem_writer.hpp) and FileSystemReader (filesystem_reader.hpp).
#pragma once

#include "ringckpt/filesystem_reader.hpp"
#include "ringckpt/filesystem_writer.hpp"
