// tools/bench_figures.cpp — the figures the bench measures and their summaries.
#include "bench_figures.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <stdexcept>
#include <utility>

namespace ringckpt::tools::bench {

const char* unit_name(Unit u) {
  switch (u) {
    case Unit::gbps: return "GB/s";
    case Unit::ms: return "ms";
    case Unit::mib: return "MiB";
  }
  return "";
}

Figure& Figures::add(std::string name, std::string label, Unit unit, std::string baseline,
                     std::string baseline_label) {
  figures_.push_back({std::move(name), std::move(label), unit, {}, std::move(baseline),
                      std::move(baseline_label), std::nullopt, std::nullopt});
  return figures_.back();
}

Figure& Figures::operator[](const std::string& name) {
  for (auto& f : figures_) if (f.name == name) return f;
  throw std::logic_error("no figure " + name);
}

const Figure& Figures::operator[](const std::string& name) const {
  if (const Figure* f = find(name)) return *f;
  throw std::logic_error("no figure " + name);
}

const Figure* Figures::find(const std::string& name) const {
  for (const auto& f : figures_) if (f.name == name) return &f;
  return nullptr;
}

void Figures::compute_ratios() {
  for (auto& f : figures_) {
    if (f.samples.empty()) continue;
    double base = 0;
    if (f.fixed_baseline) {
      base = *f.fixed_baseline;
    } else if (const Figure* b = find(f.baseline); b && !b->samples.empty()) {
      base = median(b->samples);
    }
    if (base > 0) f.ratio = median(f.samples) / base;
  }
}

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  std::size_t rank = static_cast<std::size_t>(std::ceil(p / 100.0 * static_cast<double>(v.size())));
  rank = std::clamp<std::size_t>(rank, 1, v.size());
  return v[rank - 1];
}

std::string num(double v) {
  char buf[64];
  const double a = std::fabs(v);
  if (a >= 1000) std::snprintf(buf, sizeof buf, "%.0f", v);
  else if (a >= 100) std::snprintf(buf, sizeof buf, "%.1f", v);
  else if (a >= 1) std::snprintf(buf, sizeof buf, "%.2f", v);
  else std::snprintf(buf, sizeof buf, "%.3f", v);
  return buf;
}

boost::json::value number_or_null(const std::optional<double>& v) {
  if (v && std::isfinite(*v)) return boost::json::value(*v);
  return nullptr;
}

}  // namespace ringckpt::tools::bench
