// ringckpt/ringckpt.hpp — the whole public API in one include.
#pragma once

#include "ringckpt/checkpoint.hpp"
#include "ringckpt/checkpointer.hpp"
#include "ringckpt/coordinator.hpp"
#include "ringckpt/default_planner.hpp"
#include "ringckpt/dtype.hpp"
#include "ringckpt/error.hpp"
#include "ringckpt/example_planners.hpp"
#include "ringckpt/filesystem.hpp"
#include "ringckpt/io_options.hpp"
#include "ringckpt/metadata.hpp"
#include "ringckpt/plan.hpp"
#include "ringckpt/planner.hpp"
#include "ringckpt/storage.hpp"
#include "ringckpt/tensor.hpp"
#include "ringckpt/verify.hpp"
