// A C shim over WebRTC's audio processing module (Debian libwebrtc-audio-processing 0.3): echo cancellation
// only, for ctypes (voicegate/audio/webrtc_aec.py). Built by `make install` into voicegate/audio/_vg_aec.so.
#include <cstdint>
#include <cstring>
#include <webrtc/modules/audio_processing/include/audio_processing.h>
#include <webrtc/modules/interface/module_common_types.h>

struct VgAec {
  webrtc::AudioProcessing* apm;
  int rate;
};

extern "C" {

void* vg_aec_create(int sample_rate, int delay_agnostic, int extended_filter, int suppression) {
  webrtc::Config config;
  config.Set<webrtc::ExtendedFilter>(new webrtc::ExtendedFilter(extended_filter != 0));
  config.Set<webrtc::DelayAgnostic>(new webrtc::DelayAgnostic(delay_agnostic != 0));
  webrtc::AudioProcessing* apm = webrtc::AudioProcessing::Create(config);
  if (apm == nullptr) return nullptr;
  webrtc::EchoCancellation* ec = apm->echo_cancellation();
  if (ec->Enable(true) != 0) { delete apm; return nullptr; }
  ec->set_suppression_level(static_cast<webrtc::EchoCancellation::SuppressionLevel>(suppression));
  ec->enable_metrics(true);
  ec->enable_delay_logging(true);
  apm->high_pass_filter()->Enable(false);
  VgAec* h = new VgAec{apm, sample_rate};
  return h;
}

static void fill(webrtc::AudioFrame* f, int rate, const int16_t* pcm, int n) {
  f->sample_rate_hz_ = rate;
  f->num_channels_ = 1;
  f->samples_per_channel_ = n;
  std::memcpy(f->data_, pcm, sizeof(int16_t) * n);
}

int vg_aec_far(void* p, const int16_t* pcm, int n) {
  VgAec* h = static_cast<VgAec*>(p);
  webrtc::AudioFrame f;
  fill(&f, h->rate, pcm, n);
  return h->apm->ProcessReverseStream(&f);
}

int vg_aec_near(void* p, int16_t* pcm, int n, int delay_ms) {
  VgAec* h = static_cast<VgAec*>(p);
  webrtc::AudioFrame f;
  fill(&f, h->rate, pcm, n);
  h->apm->set_stream_delay_ms(delay_ms);
  int rc = h->apm->ProcessStream(&f);
  std::memcpy(pcm, f.data_, sizeof(int16_t) * n);
  return rc;
}

int vg_aec_metrics(void* p, float* erle_db, float* a_nlp_db, int* delay_median_ms, int* delay_std_ms) {
  VgAec* h = static_cast<VgAec*>(p);
  webrtc::EchoCancellation::Metrics m;
  int rc = h->apm->echo_cancellation()->GetMetrics(&m);
  *erle_db = static_cast<float>(m.echo_return_loss_enhancement.instant);
  *a_nlp_db = static_cast<float>(m.a_nlp.instant);
  int rc2 = h->apm->echo_cancellation()->GetDelayMetrics(delay_median_ms, delay_std_ms);
  return rc != 0 ? rc : rc2;
}

void vg_aec_destroy(void* p) {
  VgAec* h = static_cast<VgAec*>(p);
  delete h->apm;
  delete h;
}
}
