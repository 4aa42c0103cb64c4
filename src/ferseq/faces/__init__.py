"""Stage 2, faces (rules ``faces_{batch}``, ``faces_qc``): each video's annotated frames become aligned face crops in
``results/faces/{video}.parquet``. Per frame: face detection (``detection``, the central face when there are
several), dlib's 68 landmarks and tracking between detections (``face_tracking``), the similarity alignment
(``alignment``); a video front to back (``face_extraction``); the videos planned into batches when the DAG is built
(``batch_plan``) and one job per batch (``batch_job``). ``landmark_features`` pose-normalises the landmarks that the
later stages read."""
