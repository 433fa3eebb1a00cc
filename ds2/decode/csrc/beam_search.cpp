// CTC prefix beam search with a KenLM n-gram language model: ds2's LM decoder.
//
// Maximizes DS2's objective Q(y) = log p_ctc(y|x) + alpha log p_lm(y) + beta words(y) over
// label sequences y, frame by frame, with
//   - one hypothesis per distinct prefix (its blank- and non-blank-ending probabilities
//     summed, as CTC defines p_ctc), kept in a prefix tree so a child is made once;
//   - DS2's pruning: at each frame only the fewest labels whose probabilities reach
//     prune_p (at most prune_top) start new prefixes; blank and repeats always count;
//   - a beam of beam_width prefixes, minus those more than beam_threshold below the best;
//   - the LM queried through KenLM's state API once per new word (the state travels with
//     the prefix), partial words scored against the LM's unigrams (a prefix of no word
//     costs unk_offset, more for long ones), and hotwords boosted while they grow.
// The scoring follows pyctcdecode 0.5.0 (alpha on the natural log of the LM probability, an
// out-of-vocabulary word costs unk_offset in log10 before weighting), so the two agree.
//
// A Search holds one utterance: feed() it frames chunk by chunk, read results() at any
// time, results(final=true) at the end; feeding a matrix in pieces gives exactly what one
// feed of the whole gives. The words of a result get frames and confidences from a Viterbi
// alignment of its labels to the frames. Python calls run without the GIL, so utterances
// decode on threads that share one LanguageModel (KenLM queries are const).

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <functional>
#include <climits>
#include <cmath>
#include <limits>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "lm/model.hh"
#include "lm/virtual_interface.hh"

namespace py = pybind11;

namespace {

constexpr double kNegInf = -std::numeric_limits<double>::infinity();
constexpr double kLn10 = 2.302585092994046;  // KenLM scores are log10
constexpr int kAvgWordChars = 6;             // a partial non-word longer than this costs more
constexpr float kCandidateFloor = -9.2103f;  // log 1e-4: pruning sorts the labels above it first

inline double log_add(double a, double b) {
  if (a == kNegInf) return b;
  if (b == kNegInf) return a;
  return a > b ? a + std::log1p(std::exp(b - a)) : b + std::log1p(std::exp(a - b));
}

int utf8_length(const std::string &text) {
  int n = 0;
  for (unsigned char byte : text) n += (byte & 0xC0) != 0x80;
  return n;
}

// Words as a trie over their UTF-8 bytes: is a partial word the start of a word, and how
// long is the shortest word it starts. Bytes, not labels, so multi-character labels work.
class ByteTrie {
 public:
  ByteTrie() { nodes_.emplace_back(); }

  void insert(const std::string &word) {
    const int length = utf8_length(word);
    int node = 0;
    nodes_[0].shortest = std::min(nodes_[0].shortest, length);
    for (unsigned char byte : word) {
      int next = child(node, byte);
      if (next < 0) {
        next = static_cast<int>(nodes_.size());
        nodes_.emplace_back();
        nodes_[node].children.emplace_back(byte, next);
      }
      node = next;
      nodes_[node].shortest = std::min(nodes_[node].shortest, length);
    }
    if (!nodes_[node].word) ++words_;
    nodes_[node].word = true;
  }

  // The node reached from ``node`` by the bytes of ``text``; -1 when it leaves the trie.
  int step(int node, const std::string &text) const {
    for (unsigned char byte : text) {
      if (node < 0) return -1;
      node = child(node, byte);
    }
    return node;
  }
  bool is_word(int node) const { return node >= 0 && nodes_[node].word; }
  bool contains(const std::string &word) const { return is_word(step(0, word)); }
  int shortest(int node) const { return nodes_[node].shortest; }
  int words() const { return words_; }

 private:
  struct Node {
    std::vector<std::pair<unsigned char, int>> children;
    bool word = false;
    int shortest = INT_MAX;  // characters of the shortest word through this node
  };
  int child(int node, unsigned char byte) const {
    for (const auto &entry : nodes_[node].children)
      if (entry.first == byte) return entry.second;
    return -1;
  }
  std::vector<Node> nodes_;
  int words_ = 0;
};

std::string first_line(const char *message) {
  std::string text(message);
  auto end = text.find('\n');
  return text.substr(0, std::min<size_t>(end, 300));
}

// A KenLM model and the unigrams (those the model knows) that partial words are checked on.
class LanguageModel {
 public:
  LanguageModel(const std::string &path, const std::vector<std::string> &unigrams) : path_(path) {
    lm::ngram::Config config;
    config.messages = nullptr;
    try {
      model_.reset(lm::ngram::LoadVirtual(path.c_str(), config));
    } catch (const std::exception &error) {
      throw std::invalid_argument(path + ": not a readable KenLM model (" + first_line(error.what()) + ")");
    }
    if (model_->StateSize() != sizeof(lm::ngram::State))
      throw std::invalid_argument(path + ": unsupported KenLM model type (state size)");
    vocabulary_ = &model_->BaseVocabulary();
    for (const auto &word : unigrams)
      if (!word.empty() && vocabulary_->Index(word) != vocabulary_->NotFound()) unigrams_.insert(word);
    given_unigrams_ = static_cast<int>(unigrams.size());
  }

  const ByteTrie &unigrams() const { return unigrams_; }
  bool has_unigrams() const { return unigrams_.words() > 0; }
  int given_unigrams() const { return given_unigrams_; }
  int order() const { return model_->Order(); }
  bool known(const std::string &word) const { return vocabulary_->Index(word) != vocabulary_->NotFound(); }

  void begin(lm::ngram::State *state) const { model_->BeginSentenceWrite(state); }

  // log10 p(word | in); out of vocabulary: not among the unigrams (or unknown to KenLM).
  float score(const lm::ngram::State &in, const std::string &word, lm::ngram::State *out, bool *oov) const {
    const lm::WordIndex index = vocabulary_->Index(word);
    *oov = index == vocabulary_->NotFound() || (has_unigrams() && !unigrams_.contains(word));
    return model_->BaseScore(&in, index, out);
  }
  float end(const lm::ngram::State &in) const {
    lm::ngram::State out;
    return model_->BaseScore(&in, vocabulary_->EndSentence(), &out);
  }

 private:
  std::string path_;
  std::unique_ptr<lm::base::Model> model_;
  const lm::base::Vocabulary *vocabulary_ = nullptr;
  ByteTrie unigrams_;
  int given_unigrams_ = 0;
};

struct Options {
  int beam_width = 100;
  double beam_threshold = 25.0;  // drop prefixes scoring this far below the best (<= 0: off)
  double prune_p = 0.99;
  int prune_top = 40;
  double alpha = 0.5;
  double beta = 1.0;
  double unk_offset = -10.0;
  double hotword_weight = 10.0;
  int compact_nodes = 1 << 20;  // past this many prefixes, drop those no beam descends from
};

struct Word {
  std::string text;
  int start, end;  // frames [start, end)
  double confidence;
};

struct Result {
  std::string text;
  std::vector<int> labels;
  double acoustic, lm, total;
  std::vector<Word> words;
};

class Search {
 public:
  Search(std::shared_ptr<const LanguageModel> lm, std::vector<std::string> labels, Options options,
         const std::vector<std::string> &hotwords)
      : lm_(std::move(lm)), labels_(std::move(labels)), options_(options) {
    if (labels_.size() < 2) throw std::invalid_argument("the vocabulary needs the blank and at least one label");
    if (options_.beam_width < 1) throw std::invalid_argument("beam width must be at least 1, got " +
                                                             std::to_string(options_.beam_width));
    if (options_.prune_top < 1) throw std::invalid_argument("prune_top must be at least 1");
    if (!(options_.prune_p > 0 && options_.prune_p <= 1)) throw std::invalid_argument("prune_p must be in (0, 1]");
    label_chars_.push_back(0);  // the blank
    for (size_t i = 1; i < labels_.size(); ++i) {
      if (labels_[i].empty()) throw std::invalid_argument("label " + std::to_string(i) + " is empty");
      label_chars_.push_back(utf8_length(labels_[i]));
      if (labels_[i] == " ") {
        space_ = static_cast<int>(i);
      } else if (labels_[i].find(' ') != std::string::npos) {
        throw std::invalid_argument("label " + std::to_string(i) + " contains a space: only \" \" may");
      }
    }
    for (const auto &phrase : hotwords) {
      std::istringstream words(phrase);
      std::string word;
      while (words >> word) hotwords_.insert(word);
    }
    has_hotwords_ = hotwords_.words() > 0;
    slot_.assign(labels_.size(), -1);
    compact_at_ = static_cast<size_t>(std::max(options_.compact_nodes, 1));
    Node root;
    root.label = space_;  // the start behaves as after a space: leading spaces change nothing
    root.pb = 0.0;
    if (lm_) lm_->begin(&root.state);
    nodes_.push_back(root);
    beams_.push_back(0);
  }

  int vocabulary() const { return static_cast<int>(labels_.size()); }
  // Without the frames kept, results carry no word timings (a one-shot decode that needs none).
  void keep_frames(bool keep) { keep_frames_ = keep; }
  int frames() const { return frames_; }
  int nodes() const { return static_cast<int>(nodes_.size()); }

  void feed(const float *data, int n_frames, int n_labels) {
    if (n_labels != vocabulary())
      throw std::invalid_argument("log-probs have " + std::to_string(n_labels) + " columns; the vocabulary has " +
                                  std::to_string(vocabulary()) + " labels (blank included)");
    for (int t = 0; t < n_frames; ++t) check_row(data + static_cast<size_t>(t) * n_labels, frames_ + t);
    if (keep_frames_) {
      frames_log_probs_.reserve(frames_log_probs_.size() + static_cast<size_t>(n_frames) * n_labels);
      frames_log_probs_.insert(frames_log_probs_.end(), data, data + static_cast<size_t>(n_frames) * n_labels);
    }
    for (int t = 0; t < n_frames; ++t) {
      step(data + static_cast<size_t>(t) * n_labels);
      ++frames_;
      if (nodes_.size() > compact_at_) compact();
    }
  }

  // The n best distinct texts, best first. final: score the end of the sentence (and the
  // last word as complete); otherwise the partial word keeps its partial score.
  std::vector<Result> results(int n, bool final, bool timing) const {
    std::vector<std::pair<double, int>> order;
    std::vector<double> lm_scores(nodes_.size(), 0.0);
    for (int id : beams_) {
      const Node &node = nodes_[id];
      const double lm = final ? final_lm(id) : node.lm_words + node.lm_partial;
      lm_scores[id] = lm;
      order.emplace_back(log_add(node.pb, node.pnb) + lm, id);
    }
    std::sort(order.begin(), order.end(), [](const auto &a, const auto &b) { return a.first > b.first; });
    std::vector<Result> out;
    std::unordered_set<std::string> seen;
    for (const auto &entry : order) {
      if (static_cast<int>(out.size()) >= n) break;
      Result result;
      result.labels = path(entry.second);
      result.text = text_of(result.labels);
      if (!seen.insert(result.text).second) continue;  // "a b " and "a b": one text
      result.lm = lm_scores[entry.second];
      result.total = entry.first;
      result.acoustic = entry.first - result.lm;
      if (timing && keep_frames_) result.words = align_words(result.labels);
      out.push_back(std::move(result));
    }
    return out;
  }

 private:
  struct Node {
    int parent = -1, label = -1;
    int partial_chars = 0;       // characters of the word being spelled (0 right after a space)
    int trie = 0, hot = 0;       // the partial word's nodes in the unigram / hotword tries (-1: off them)
    int first_child = -1, next_sibling = -1;  // the prefixes made from this one, as a list
    lm::ngram::State state;      // LM state after the last complete word
    double lm_words = 0.0;       // alpha ln10 (log10 p + unk) + beta per complete word, + hotword bonuses
    double lm_partial = 0.0;     // the partial word's score
    double pb = kNegInf, pnb = kNegInf;            // log p of the prefix ending in blank / in its last label
    double next_pb = kNegInf, next_pnb = kNegInf;  // the same after the frame being processed
    int stamp = -1;                                // frame next_* belong to
  };

  // A prefix this frame could make: made into a Node only if it makes the beam.
  struct Pending {
    int parent, label;
    double from;  // log p flowing into it at this frame (it ends in its label)
    double lm_words, lm_partial;
    int partial_chars, trie, hot;
    lm::ngram::State state;  // after a space: the state past the completed word
  };

  // NaN or a positive log-probability stops the search (the Python side also checks that
  // each row sums to one, vectorized).
  void check_row(const float *row, int t) const {
    const int n_labels = vocabulary();
    bool bad = false;
    for (int v = 0; v < n_labels; ++v) bad |= !(row[v] <= 1e-3f);  // NaN or positive; no branch
    if (!bad) return;
    for (int v = 0; v < n_labels; ++v) {
      const float value = row[v];
      if (std::isnan(value) || value > 1e-3f)
        throw std::invalid_argument("frame " + std::to_string(t) + " has a " + (std::isnan(value) ? "NaN" : "positive") +
                                    " log-probability (label " + std::to_string(v) + "): the decoder takes log_softmax output");
    }
  }

  // DS2's pruning: the labels (blank aside) among the fewest whose probabilities reach prune_p,
  // at most prune_top. The labels above kCandidateFloor are sorted first; all of them only
  // when those do not reach prune_p.
  void candidates(const float *row) {
    const int n_labels = vocabulary();
    candidates_.clear();
    candidates_sorted_ = false;
    if (options_.prune_p >= 1.0 && options_.prune_top >= n_labels) {
      for (int v = 1; v < n_labels; ++v) candidates_.push_back(v);
      return;
    }
    candidates_sorted_ = true;
    auto more_likely = [row](int a, int b) { return row[a] > row[b] || (row[a] == row[b] && a < b); };
    for (int pass = 0; pass < 2; ++pass) {  // pass 1 only when the mass under the floor is needed
      order_.resize(n_labels);
      int above = 0;
      for (int v = 0; v < n_labels; ++v) {  // no branch: the test is a coin flip on a flat tail
        order_[above] = v;
        above += pass == 1 || row[v] > kCandidateFloor;
      }
      order_.resize(above);
      const int top = std::min<int>(options_.prune_top, above);
      if (top < above)  // the top ones first (linear), then sorted
        std::nth_element(order_.begin(), order_.begin() + top, order_.end(), more_likely);
      std::sort(order_.begin(), order_.begin() + top, more_likely);
      double mass = 0.0;
      int kept = 0;
      while (kept < top && mass < options_.prune_p) mass += std::exp(static_cast<double>(row[order_[kept++]]));
      if (pass == 0 && mass < options_.prune_p && kept < options_.prune_top && above < n_labels) continue;
      for (int i = 0; i < kept; ++i)
        if (order_[i] != 0) candidates_.push_back(order_[i]);
      return;
    }
  }

  void touch(int id) {
    Node &node = nodes_[id];
    if (node.stamp != frames_) {
      node.stamp = frames_;
      node.next_pb = node.next_pnb = kNegInf;
      touched_.push_back(id);
    }
  }

  // The word being spelled at a prefix, read back to the last space.
  std::string partial_word(int id) const {
    std::vector<int> labels;
    for (; id > 0 && nodes_[id].label != space_; id = nodes_[id].parent) labels.push_back(nodes_[id].label);
    std::string word;
    for (auto label = labels.rbegin(); label != labels.rend(); ++label) word += labels_[*label];
    return word;
  }

  // What the prefix ``parent`` + ``label`` would score (its LM side), without making it.
  void prepare(int parent, int label, double from, Pending *p) const {
    const Node &node = nodes_[parent];
    p->parent = parent;
    p->label = label;
    p->from = from;
    if (label == space_) {  // the partial word is complete
      p->lm_words = node.lm_words + word_score(node.state, partial_word(parent), &p->state, false);
      p->lm_partial = 0.0;
      p->partial_chars = p->trie = p->hot = 0;
    } else {
      p->lm_words = node.lm_words;
      p->partial_chars = node.partial_chars + label_chars_[label];
      p->trie = (lm_ && node.trie >= 0) ? lm_->unigrams().step(node.trie, labels_[label]) : -1;
      p->hot = (has_hotwords_ && node.hot >= 0) ? hotwords_.step(node.hot, labels_[label]) : -1;
      p->lm_partial = partial_score(p->partial_chars, p->trie, p->hot);
    }
  }

  int make(const Pending &p) {
    Node node;
    node.parent = p.parent;
    node.label = p.label;
    node.partial_chars = p.partial_chars;
    node.trie = p.trie;
    node.hot = p.hot;
    node.state = p.label == space_ ? p.state : nodes_[p.parent].state;
    node.lm_words = p.lm_words;
    node.lm_partial = p.lm_partial;
    node.stamp = frames_;
    node.next_pnb = p.from;
    const int id = static_cast<int>(nodes_.size());
    node.next_sibling = nodes_[p.parent].first_child;
    nodes_.push_back(node);
    nodes_[p.parent].first_child = id;
    return id;
  }

  double word_score(const lm::ngram::State &in, const std::string &word, lm::ngram::State *out, bool end) const {
    double score = 0.0;
    if (lm_) {
      bool oov = false;
      double log10_p = lm_->score(in, word, out, &oov);
      if (oov) log10_p += options_.unk_offset;
      if (end) log10_p += lm_->end(*out);
      score = options_.alpha * kLn10 * log10_p + options_.beta;
    } else {
      *out = in;
    }
    if (has_hotwords_ && hotwords_.contains(word)) score += options_.hotword_weight;
    return score;
  }

  double partial_score(int chars, int trie, int hot) const {
    if (chars == 0) return 0.0;
    if (has_hotwords_ && hot >= 0) return options_.hotword_weight * chars / hotwords_.shortest(hot);
    if (!lm_) return 0.0;
    double unk = (lm_->has_unigrams() && trie >= 0) ? 0.0 : options_.unk_offset;
    if (chars > kAvgWordChars) unk *= static_cast<double>(chars) / kAvgWordChars;
    return unk;
  }

  double final_lm(int id) const {
    const Node &node = nodes_[id];
    if (node.partial_chars > 0) {
      lm::ngram::State out;
      return node.lm_words + word_score(node.state, partial_word(id), &out, true);
    }
    return node.lm_words + (lm_ ? options_.alpha * kLn10 * lm_->end(node.state) : 0.0);
  }

  void step(const float *row) {
    candidates(row);
    touched_.clear();
    pending_.clear();
    const double blank = row[0];
    // Pass 1: the prefixes already made gather what flows into them (blank, repeat, a label
    // to a child made before).
    for (const int id : beams_) {  // best first
      const double pb = nodes_[id].pb, pnb = nodes_[id].pnb, total = log_add(pb, pnb);
      const int last = nodes_[id].label;
      touch(id);
      nodes_[id].next_pb = log_add(nodes_[id].next_pb, total + blank);
      if (last >= 0) nodes_[id].next_pnb = log_add(nodes_[id].next_pnb, pnb + row[last]);  // a repeat collapses
      if (nodes_[id].first_child < 0 && last != space_) continue;
      for (int c = nodes_[id].first_child; c >= 0; c = nodes_[c].next_sibling) slot_[nodes_[c].label] = c;
      for (const int label : candidates_) {
        if (label == space_ && last == space_) {
          // a space after a space (or at the start) changes no word: the prefix stays
          nodes_[id].next_pnb = log_add(nodes_[id].next_pnb, pb + row[label]);
        } else if (slot_[label] >= 0) {
          const int next = slot_[label];
          touch(next);
          const double from = (label == last ? pb : total) + row[label];  // a repeated label needs a blank between
          nodes_[next].next_pnb = log_add(nodes_[next].next_pnb, from);
        }
      }
      for (int c = nodes_[id].first_child; c >= 0; c = nodes_[c].next_sibling) slot_[nodes_[c].label] = -1;
    }
    scored_.clear();  // made prefixes (index >= 0) and pending ones (-1 - index), ranked together
    double best = kNegInf;
    for (const int id : touched_) {
      const Node &node = nodes_[id];
      const double score = log_add(node.next_pb, node.next_pnb) + node.lm_words + node.lm_partial;
      if (score == kNegInf) continue;
      scored_.emplace_back(score, id);
      best = std::max(best, score);
    }
    // Pass 2: new prefixes. One is prepared (its LM side computed: a KenLM query when it ends
    // a word) only if an upper bound of its score, what flows into it + its parent's complete
    // words + the most a word adds (beta, a hotword), reaches the cut: beam_threshold below
    // the best made prefix, and the beam_width-th made prefix's score (both only grow). With
    // the labels most likely first, the first label under the cut ends a prefix's turn.
    double cut = kNegInf;
    if (options_.alpha >= 0) {
      if (options_.beam_threshold > 0) cut = best - options_.beam_threshold;
      if (static_cast<int>(scored_.size()) >= options_.beam_width) {
        kth_.clear();
        for (const auto &entry : scored_) kth_.push_back(entry.first);
        std::nth_element(kth_.begin(), kth_.begin() + (options_.beam_width - 1), kth_.end(), std::greater<double>());
        cut = std::max(cut, kth_[options_.beam_width - 1]);
      }
    }
    const double most_added = (lm_ ? std::max(0.0, options_.beta) : 0.0) + (has_hotwords_ ? options_.hotword_weight : 0.0);
    for (const int id : beams_) {
      const double pb = nodes_[id].pb, total = log_add(pb, nodes_[id].pnb);
      const int last = nodes_[id].label;
      const double ceiling = nodes_[id].lm_words + most_added;
      if (candidates_sorted_ && !candidates_.empty() && total + row[candidates_[0]] + ceiling < cut) continue;
      for (int c = nodes_[id].first_child; c >= 0; c = nodes_[c].next_sibling) slot_[nodes_[c].label] = c;
      for (const int label : candidates_) {
        if ((label == space_ && last == space_) || slot_[label] >= 0) continue;  // done in pass 1
        const double from = (label == last ? pb : total) + row[label];
        if (from + ceiling < cut) {
          if (candidates_sorted_ && label != last) break;  // every later label flows in less
          continue;
        }
        pending_.emplace_back();
        prepare(id, label, from, &pending_.back());
      }
      for (int c = nodes_[id].first_child; c >= 0; c = nodes_[c].next_sibling) slot_[nodes_[c].label] = -1;
    }
    for (size_t k = 0; k < pending_.size(); ++k) {
      const Pending &p = pending_[k];
      const double score = p.from + p.lm_words + p.lm_partial;
      if (score == kNegInf) continue;
      scored_.emplace_back(score, -1 - static_cast<int>(k));
      best = std::max(best, score);
    }
    if (options_.beam_threshold > 0) {
      const double floor = best - options_.beam_threshold;
      scored_.erase(std::remove_if(scored_.begin(), scored_.end(), [floor](const auto &s) { return s.first < floor; }),
                    scored_.end());
    }
    auto better = [](const auto &a, const auto &b) { return a.first > b.first || (a.first == b.first && a.second > b.second); };
    if (static_cast<int>(scored_.size()) > options_.beam_width) {
      std::nth_element(scored_.begin(), scored_.begin() + options_.beam_width, scored_.end(), better);
      scored_.resize(options_.beam_width);
    }
    std::sort(scored_.begin(), scored_.end(), better);  // best first: the bound above bites early
    beams_.clear();
    for (const auto &entry : scored_) {
      const int id = entry.second >= 0 ? entry.second : make(pending_[-1 - entry.second]);
      Node &node = nodes_[id];
      node.pb = node.next_pb;
      node.pnb = node.next_pnb;
      beams_.push_back(id);
    }
    if (beams_.empty()) {  // every prefix underflowed (-inf rows): keep the empty one alive
      nodes_[0].pb = 0.0;
      nodes_[0].pnb = kNegInf;
      beams_.push_back(0);
    }
  }

  // Keep only the prefixes the beams descend from (an hour of audio would otherwise grow
  // the tree by beam_width prefixes a frame). Parents precede children, so one pass in
  // index order renumbers them; the child lists are rebuilt.
  void compact() {
    std::vector<int> remap(nodes_.size(), -1);
    remap[0] = 0;
    for (int id : beams_)
      for (int n = id; n > 0 && remap[n] < 0; n = nodes_[n].parent) remap[n] = 0;  // mark
    int next = 0;
    for (size_t n = 0; n < nodes_.size(); ++n)
      if (remap[n] >= 0) {
        remap[n] = next;
        if (static_cast<int>(n) != next) nodes_[next] = nodes_[n];
        Node &node = nodes_[next];
        node.parent = n == 0 ? -1 : remap[node.parent];
        node.first_child = node.next_sibling = -1;
        ++next;
      }
    nodes_.resize(next);
    for (int n = next - 1; n > 0; --n) {
      Node &node = nodes_[n];
      node.next_sibling = nodes_[node.parent].first_child;
      nodes_[node.parent].first_child = n;
    }
    for (int &id : beams_) id = remap[id];
    // a live tree near the limit would otherwise be compacted at every frame
    compact_at_ = std::max<size_t>(static_cast<size_t>(options_.compact_nodes), 2 * nodes_.size());
  }

  std::vector<int> path(int id) const {
    std::vector<int> labels;
    for (; id > 0; id = nodes_[id].parent) labels.push_back(nodes_[id].label);
    std::reverse(labels.begin(), labels.end());
    return labels;
  }

  std::string text_of(const std::vector<int> &labels) const {
    std::string text;
    for (int label : labels) text += labels_[label];
    while (!text.empty() && text.back() == ' ') text.pop_back();
    return text;
  }

  // Viterbi alignment of the labels to all frames fed: each word's first and last frame and
  // its confidence, the mean probability of its labels over the frames given to them.
  std::vector<Word> align_words(const std::vector<int> &labels) const {
    std::vector<Word> words;
    const int n_labels = static_cast<int>(labels.size()), states = 2 * n_labels + 1, T = frames_, V = vocabulary();
    if (n_labels == 0 || T == 0) return words;
    std::vector<double> score(states, kNegInf), next(states);
    std::vector<int> back(static_cast<size_t>(T) * states, -1);
    auto label_of = [&](int s) { return s % 2 == 0 ? 0 : labels[s / 2]; };
    const float *lp = frames_log_probs_.data();
    score[0] = lp[0];
    if (states > 1) score[1] = lp[label_of(1)];
    for (int t = 1; t < T; ++t) {
      const float *row = lp + static_cast<size_t>(t) * V;
      for (int s = 0; s < states; ++s) {
        double best = score[s];
        int from = s;
        if (s >= 1 && score[s - 1] > best) best = score[s - 1], from = s - 1;
        if (s >= 2 && s % 2 == 1 && labels[s / 2] != labels[s / 2 - 1] && score[s - 2] > best) best = score[s - 2], from = s - 2;
        next[s] = best == kNegInf ? kNegInf : best + row[label_of(s)];
        back[static_cast<size_t>(t) * states + s] = from;
      }
      score.swap(next);
    }
    int s = states - 1;
    if (states >= 2 && score[states - 2] > score[s]) s = states - 2;
    if (score[s] == kNegInf) return words;  // cannot happen for a path the search found
    std::vector<int> frame_state(T);
    for (int t = T - 1; t >= 0; --t) {
      frame_state[t] = s;
      if (t > 0) s = back[static_cast<size_t>(t) * states + s];
    }
    // labels -> word number (-1 for spaces)
    std::vector<int> word_of(n_labels, -1);
    int n_words = 0;
    bool in_word = false;
    for (int i = 0; i < n_labels; ++i) {
      if (labels[i] == space_) {
        in_word = false;
        continue;
      }
      if (!in_word) {
        words.push_back({std::string(), INT_MAX, -1, 0.0});
        ++n_words;
        in_word = true;
      }
      word_of[i] = n_words - 1;
      words.back().text += labels_[labels[i]];
    }
    std::vector<int> counts(n_words, 0);
    for (int t = 0; t < T; ++t) {
      const int state = frame_state[t];
      if (state % 2 == 0) continue;
      const int w = word_of[state / 2];
      if (w < 0) continue;
      words[w].start = std::min(words[w].start, t);
      words[w].end = std::max(words[w].end, t + 1);
      words[w].confidence += std::exp(static_cast<double>(lp[static_cast<size_t>(t) * V + labels[state / 2]]));
      ++counts[w];
    }
    for (int w = 0; w < n_words; ++w) words[w].confidence = counts[w] ? words[w].confidence / counts[w] : 0.0;
    return words;
  }

  std::shared_ptr<const LanguageModel> lm_;
  std::vector<std::string> labels_;
  Options options_;
  ByteTrie hotwords_;
  bool has_hotwords_ = false;
  int space_ = -1;
  int frames_ = 0;
  std::vector<float> frames_log_probs_;  // everything fed, for the alignment of the results
  bool keep_frames_ = true;
  size_t compact_at_ = 0;  // compact() when the tree grows past this
  std::vector<Node> nodes_;
  std::vector<int> slot_;  // label -> child of the prefix being extended (-1: none)
  std::vector<int> beams_, touched_, candidates_, order_;
  std::vector<Pending> pending_;
  bool candidates_sorted_ = false;  // candidates_ most likely first (with pruning)
  std::vector<double> kth_;
  std::vector<int> label_chars_;  // characters in each label
  std::vector<std::pair<double, int>> scored_;
};

using FloatArray = py::array_t<float, py::array::c_style | py::array::forcecast>;

py::list to_python(const std::vector<Result> &results) {
  py::list out;
  for (const auto &result : results) {
    py::list words;
    for (const auto &word : result.words)
      words.append(py::make_tuple(py::str(word.text), word.start, word.end, word.confidence));
    out.append(py::make_tuple(py::str(result.text), result.acoustic, result.lm, result.total, words));
  }
  return out;
}

void feed(Search &search, const FloatArray &log_probs) {
  if (log_probs.ndim() != 2) throw std::invalid_argument("log-probs must be 2-D (frames, labels), got " +
                                                         std::to_string(log_probs.ndim()) + "-D");
  const float *data = log_probs.data();
  const int frames = static_cast<int>(log_probs.shape(0)), labels = static_cast<int>(log_probs.shape(1));
  py::gil_scoped_release release;
  search.feed(data, frames, labels);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "ds2's CTC prefix beam search with a KenLM language model";

  py::class_<LanguageModel, std::shared_ptr<LanguageModel>>(m, "LanguageModel")
      .def(py::init<const std::string &, const std::vector<std::string> &>(), py::arg("path"), py::arg("unigrams"),
           py::call_guard<py::gil_scoped_release>())
      .def_property_readonly("order", &LanguageModel::order)
      .def_property_readonly("unigrams_known", [](const LanguageModel &lm) { return lm.unigrams().words(); })
      .def_property_readonly("unigrams_given", &LanguageModel::given_unigrams)
      .def("known", &LanguageModel::known, py::arg("word"));

  py::class_<Options>(m, "Options")
      .def(py::init<>())
      .def_readwrite("beam_width", &Options::beam_width)
      .def_readwrite("beam_threshold", &Options::beam_threshold)
      .def_readwrite("prune_p", &Options::prune_p)
      .def_readwrite("prune_top", &Options::prune_top)
      .def_readwrite("alpha", &Options::alpha)
      .def_readwrite("beta", &Options::beta)
      .def_readwrite("unk_offset", &Options::unk_offset)
      .def_readwrite("hotword_weight", &Options::hotword_weight)
      .def_readwrite("compact_nodes", &Options::compact_nodes);

  py::class_<Search>(m, "Search")
      .def(py::init<std::shared_ptr<const LanguageModel>, std::vector<std::string>, Options,
                    const std::vector<std::string> &>(),
           py::arg("lm").none(true), py::arg("labels"), py::arg("options"), py::arg("hotwords"))
      .def("feed", &feed, py::arg("log_probs"))
      .def("results", [](const Search &search, int n, bool final, bool timing) {
             std::vector<Result> results;
             {
               py::gil_scoped_release release;
               results = search.results(n, final, timing);
             }
             return to_python(results);
           }, py::arg("n") = 1, py::arg("final") = true, py::arg("timing") = true)
      .def_property_readonly("frames", &Search::frames)
      .def_property_readonly("nodes", &Search::nodes, "prefixes made so far (a measure of the search's work)");

  m.def("decode", [](std::shared_ptr<const LanguageModel> lm, std::vector<std::string> labels, Options options,
                     const std::vector<std::string> &hotwords, const FloatArray &log_probs, int n, bool timing) {
          Search search(std::move(lm), std::move(labels), options, hotwords);
          search.keep_frames(timing);
          feed(search, log_probs);
          std::vector<Result> results;
          {
            py::gil_scoped_release release;
            results = search.results(n, true, timing);
          }
          return to_python(results);
        }, py::arg("lm").none(true), py::arg("labels"), py::arg("options"), py::arg("hotwords"),
        py::arg("log_probs"), py::arg("n") = 1, py::arg("timing") = true,
        "Decode a whole (frames, labels) log-prob matrix: [(text, acoustic, lm, total, words)], best first.");
}
